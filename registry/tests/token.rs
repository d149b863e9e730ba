//! The Bearer token flow against a small fake registry with its own token server, written here
//! (distribution 2.8 serves token auth only with a signing certificate set-up): the challenge,
//! the token request with Basic credentials and scope, token reuse, refresh after a 401, and a
//! wrong password.

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use common::{config_for, layer_tar, store};
use kiln_cache::digest::Digest;
use kiln_cache::image::{self, Descriptor, Manifest};
use kiln_cache::reference::Reference;
use kiln_registry::{Credentials, PullOptions, Registry, RegistryError};

#[derive(Default)]
struct State {
    /// Valid tokens and how many more requests each may authorise.
    tokens: HashMap<String, usize>,
    /// The query strings of token requests, in order.
    token_requests: Vec<String>,
    /// Content by request path.
    content: HashMap<String, (String, Vec<u8>)>,
    /// Requests each new token may authorise.
    uses_per_token: usize,
}

/// The fake registry and token server, on one loopback port. Stops when dropped.
struct FakeRegistry {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeRegistry {
    fn start(uses_per_token: usize) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            uses_per_token,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for connection in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(connection) = connection {
                        let _ = serve(connection, port, &state);
                    }
                }
            })
        };
        FakeRegistry {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn domain(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn add(&self, path: &str, content_type: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .content
            .insert(path.to_string(), (content_type.to_string(), bytes));
    }

    fn token_requests(&self) -> Vec<String> {
        self.state.lock().unwrap().token_requests.clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Serves one request and closes the connection.
fn serve(mut stream: TcpStream, port: u16, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: u64 = headers
        .get("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink())?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut state = state.lock().unwrap();
    if path == "/token" {
        state.token_requests.push(query.to_string());
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                common::USER,
                common::PASSWORD
            ))
        );
        if headers.get("authorization") != Some(&expected) {
            respond(
                &mut stream,
                "401 Unauthorized",
                &[],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"incorrect username or password"}]}"#,
            );
            return Ok(());
        }
        let token = format!("token-{}", state.token_requests.len());
        let uses = state.uses_per_token;
        state.tokens.insert(token.clone(), uses);
        respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".to_string())],
            format!(r#"{{"token":"{token}","expires_in":300}}"#).as_bytes(),
        );
        return Ok(());
    }
    let token = headers
        .get("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string);
    let authorised = match token.and_then(|token| state.tokens.get_mut(&token)) {
        Some(uses) if *uses > 0 => {
            *uses -= 1;
            true
        }
        Some(_) | None => false,
    };
    if !authorised {
        respond(
            &mut stream,
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry""#),
            )],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        return Ok(());
    }
    match state.content.get(path) {
        Some((content_type, bytes)) => {
            let body = if method == "HEAD" { &[][..] } else { bytes };
            respond(
                &mut stream,
                "200 OK",
                &[
                    ("Content-Type", content_type.clone()),
                    ("Docker-Content-Digest", Digest::of(bytes).to_string()),
                ],
                body,
            );
        }
        None => respond(&mut stream, "404 Not Found", &[], b"{}"),
    }
    Ok(())
}

/// Serves a one-layer image as `app:latest`; returns its ID.
fn serve_image(fake: &FakeRegistry) -> Digest {
    let layers = vec![layer_tar(&[("hello", b"from behind a token")])];
    let config = config_for(&layers, "amd64");
    let manifest = Manifest::oci(
        Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            Digest::of(&config),
            config.len() as u64,
        ),
        vec![Descriptor::new(
            image::MEDIA_TYPE_OCI_LAYER,
            Digest::of(&layers[0]),
            layers[0].len() as u64,
        )],
    );
    let manifest = image::canonical_json(&manifest).unwrap();
    fake.add(
        "/v2/app/manifests/latest",
        image::MEDIA_TYPE_OCI_MANIFEST,
        manifest,
    );
    fake.add(
        &format!("/v2/app/blobs/{}", Digest::of(&config)),
        "application/octet-stream",
        config.clone(),
    );
    fake.add(
        &format!("/v2/app/blobs/{}", Digest::of(&layers[0])),
        "application/octet-stream",
        layers[0].clone(),
    );
    Digest::of(&config)
}

fn credentials(password: &str) -> Credentials {
    Credentials {
        username: common::USER.to_string(),
        password: password.to_string(),
    }
}

#[test]
fn a_token_is_fetched_once_per_scope_with_the_credentials_and_reused() {
    let fake = FakeRegistry::start(usize::MAX);
    let id = serve_image(&fake);
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::connect(
        &fake.domain(),
        &common::options(dir.path()),
        Some(credentials(common::PASSWORD)),
    )
    .unwrap();
    let mut store = store(dir.path(), "store");
    let reference = Reference::parse(&format!("{}/app", fake.domain())).unwrap();
    let pulled = kiln_registry::pull(
        &mut store,
        &registry,
        &reference,
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    assert_eq!(pulled.id, id);
    assert_eq!(
        fake.token_requests(),
        vec!["service=fake-registry&scope=repository%3Aapp%3Apull&account=kiln".to_string()],
        "one token for the manifest, the config and the layer"
    );
}

#[test]
fn a_refused_token_is_refreshed_once() {
    // Each token authorises one request: every request after the first needs a new one.
    let fake = FakeRegistry::start(1);
    let id = serve_image(&fake);
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::connect(
        &fake.domain(),
        &common::options(dir.path()),
        Some(credentials(common::PASSWORD)),
    )
    .unwrap();
    let mut store = store(dir.path(), "store");
    let reference = Reference::parse(&format!("{}/app", fake.domain())).unwrap();
    let pulled = kiln_registry::pull(
        &mut store,
        &registry,
        &reference,
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    assert_eq!(pulled.id, id);
    assert_eq!(fake.token_requests().len(), 3, "manifest, config, layer");
}

#[test]
fn a_wrong_password_is_refused_naming_the_registry() {
    let fake = FakeRegistry::start(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::connect(
        &fake.domain(),
        &common::options(dir.path()),
        Some(credentials("wrong")),
    )
    .unwrap();
    let error = registry.verify_login().unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "{}: unauthorized: incorrect username or password",
            fake.domain()
        )
    );
}
