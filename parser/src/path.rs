//! Path arithmetic on the `/`-separated paths a Dockerfile names (COPY sources, WORKDIR,
//! `.dockerignore` patterns): pure string work, no file system.

/// Go's `filepath.Clean` on a `/`-separated path: the shortest equivalent path, `.` for an
/// empty result; `..` at the start of a relative path is kept, above `/` it is dropped.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}
