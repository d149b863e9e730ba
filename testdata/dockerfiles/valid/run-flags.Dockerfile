FROM busybox
RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0755,uid=1000,gid=1000 pip install .
RUN --mount=type=bind,source=src,target=/src,from=build,rw \
    --mount=target=/ctx \
    make
RUN --mount=type=tmpfs,target=/tmp,size=64m true
RUN --mount=type=secret,id=token,target=/run/secrets/token,required=true,mode=0400 cat /run/secrets/token
RUN --mount=type=secret,id=aws,env=AWS_TOKEN true
RUN --mount=type=ssh,id=default,required git clone git@example.com:repo.git
RUN --network=none --security=insecure echo offline
RUN --network=host ["wget", "http://127.0.0.1/"]
