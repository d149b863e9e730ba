FROM busybox
COPY app.py
