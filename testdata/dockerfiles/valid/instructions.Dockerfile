FROM --platform=$BUILDPLATFORM busybox:1.36 AS Base
EXPOSE 80 443/tcp 53/udp 8000-8100 ${PORT}
VOLUME ["/data", "/logs"]
VOLUME /var/lib/a /var/lib/b
USER app:app
WORKDIR /srv/$APP
STOPSIGNAL SIGTERM
HEALTHCHECK NONE
HEALTHCHECK --interval=30s --timeout=3s --start-period=1m --start-interval=500ms --retries=3 \
  CMD curl -f http://localhost/ || exit 1
HEALTHCHECK CMD ["/bin/check", "--quiet"]
ONBUILD ADD . /app/src
ONBUILD RUN ["make"]
onbuild copy --from=base /a /b
from base as final
