FROM busybox
\
   RUN echo started on a continuation line
