FROM busybox
CMD [ "a", 'b' ]
CMD ["echo", "hello world"]
CMD ["/bin/echo", "\u00e9t\u00e9", "quote\"inside"]
ENTRYPOINT ["/entrypoint.sh"]
ENTRYPOINT exec top -b
CMD []
CMD ["unterminated"
RUN [ "echo", "ok" ]
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
SHELL ["powershell", "-command"]
