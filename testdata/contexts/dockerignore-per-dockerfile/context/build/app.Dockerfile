FROM kbase
COPY . /ctx
