FROM busybox AS build
FROM busybox
COPY --from=build --chown=app:app --chmod=0755 --link /out/bin /usr/local/bin/
COPY --parents --exclude=*.tmp --exclude=cache/ src/*/main.go ./
COPY ["file with spaces.txt", "other file", "/dest dir/"]
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tar.gz /a/
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /buildkit
ADD --unpack=false --link=false archive.tar.gz /opt/
ADD --chown=1000:1000 --chmod=644 ["a b.txt", "/x/"]
COPY *.txt /dest/
