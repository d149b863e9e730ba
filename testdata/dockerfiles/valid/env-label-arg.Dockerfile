ARG BASE=busybox VERSION
ARG "QUOTED=a b"
FROM ${BASE}:${VERSION:-latest}
ARG one two=2 three="3 3"
ENV A=1 B="two words" C=three\ words D='single $quoted'
ENV LEGACY value with spaces
LABEL "com.example.vendor"="ACME Incorporated" version=1.0 description="This text illustrates \
that label-values can span multiple lines."
LABEL legacy.key legacy value
MAINTAINER Jane Doe <jane@example.com>
