FROM busybox
RUN <<EOF
echo hello
echo $HOME
EOF
RUN <<-"EOT" bash
		echo tabs are stripped
	EOT
RUN <<FILE1 cat > /file1 && <<'FILE2' cat > /file2
content $one
FILE1
content $two
FILE2
COPY <<EOF /etc/app.conf
key=value
EOF
ADD <<one <<two /dest/
first
one
second
two
RUN 3<<EOF cat /dev/fd/3
fd three
EOF
ONBUILD RUN <<EOF
echo onbuild heredoc
EOF
RUN ["cat", "<<NOT_A_HEREDOC"]
RUN echo $((1 << 2))x
