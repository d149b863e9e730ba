FROM busybox
ADD --from=build /a /b
