//! The HTTP side of the distribution API: endpoints, authentication (anonymous, Basic, Bearer
//! tokens), and the requests pull and push are made of.
//!
//! One [`Registry`] per registry host. It pings `/v2/` once to learn how the registry wants to
//! be authenticated (the `WWW-Authenticate` challenge), then authorises every request up front:
//! with Basic credentials, or with a Bearer token fetched from the challenge's realm for the
//! scopes the request needs (`repository:NAME:pull`, `repository:NAME:pull,push`) and cached per
//! scope set until it expires. A 401 on a request whose body can be sent again (everything but a
//! streamed blob upload) drops the cached token and retries once, so expired tokens are
//! refreshed; uploads are always preceded by a request of the same scope.
//!
//! A `Registry` is `Sync`: layer transfers share it across threads.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiln_cache::digest::Digest;
use ureq::http::{self, Method, Response, StatusCode};

use crate::credentials::{Credentials, DockerConfig};
use crate::error::{RegistryError, error_message};

/// The host Docker Hub's API answers on (`docker.io` is only a name).
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// The largest manifest or index kiln reads (Docker's limit is 4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest image config kiln reads.
pub const CONFIG_LIMIT: u64 = 16 << 20;

/// Manifest media types kiln asks for, best first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// How to reach registries: which may use plain HTTP, where credentials are, how to upload.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host[:port]`, or a host for all its ports) that may be reached over plain
    /// HTTP, besides loopback ones (`localhost`, `127.0.0.0/8`, `::1`), which always may
    /// (Docker's `--insecure-registry`). HTTPS is tried first, as Docker does.
    pub insecure_registries: Vec<String>,
    /// Where credentials are read from.
    pub docker_config: DockerConfig,
    /// Layers transferred at once.
    pub concurrency: usize,
    /// How blobs are uploaded.
    pub upload: UploadMode,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            docker_config: DockerConfig::from_env(),
            concurrency: 3,
            upload: UploadMode::Monolithic,
        }
    }
}

/// How blob content goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// One `PUT` with the whole blob (streamed from the store, with its length).
    Monolithic,
    /// `PATCH` requests of at most this many bytes, then an empty `PUT`; for registries or
    /// proxies that cap request sizes.
    Chunked(u64),
}

/// A registry's answer to `GET /v2/` without credentials: how it wants to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// No authentication.
    None,
    /// HTTP Basic with the user's credentials.
    Basic,
    /// A Bearer token from `realm` (distribution's token authentication).
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header (`Bearer realm="...",service="...",scope="..."`).
    /// Unknown schemes are `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let parameters = parse_parameters(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let realm = parameters.get("realm")?.clone();
                Some(Challenge::Bearer {
                    realm,
                    service: parameters.get("service").cloned(),
                })
            }
            _ => None,
        }
    }
}

/// `key="value", key2=value2` auth parameters (RFC 7235), keys lowercased.
fn parse_parameters(text: &str) -> HashMap<String, String> {
    let mut parameters = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, character)) = chars.next() {
                match character {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    other => value.push(other),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        parameters.insert(key, value);
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    parameters
}

/// Percent-encodes a query parameter value.
fn encode_query(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char);
            }
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    encoded
}

/// Whether a registry domain is on this machine's loopback (Docker treats `127.0.0.0/8` and
/// `::1` as insecure registries by default; `localhost` too).
pub fn is_loopback(domain: &str) -> bool {
    let host = host_of(domain);
    if host == "localhost" {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|address| match address {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
        })
}

/// The host of `host[:port]` (`[::1]:5000` → `[::1]`).
fn host_of(domain: &str) -> &str {
    if domain.starts_with('[') {
        return domain
            .split_once(']')
            .map_or(domain, |(host, _)| &domain[..host.len() + 1]);
    }
    domain.rsplit_once(':').map_or(domain, |(host, _)| host)
}

/// What a request sends.
pub(crate) enum Payload<'a> {
    Empty,
    /// In memory: can be sent again after a 401.
    Bytes(&'a [u8]),
    /// Streamed, with its length: sent once.
    Stream {
        reader: &'a mut dyn Read,
        length: u64,
    },
}

/// A cached Bearer token.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// One registry host, reachable and with its authentication settled.
#[derive(Debug)]
pub struct Registry {
    domain: String,
    /// `https://host[:port]` or `http://host[:port]`.
    base: String,
    agent: ureq::Agent,
    challenge: Challenge,
    credentials: Option<Credentials>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Layers transferred at once.
    pub(crate) concurrency: usize,
    pub(crate) upload: UploadMode,
}

/// Makes the HTTP agent kiln uses: statuses are answers, not errors; redirects are followed
/// without passing credentials on (blob downloads redirect to storage).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(300)))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .max_redirects(10)
        .build()
        .new_agent()
}

impl Registry {
    /// Reaches the registry of `domain` (`docker.io`, `localhost:5000`): picks HTTPS, or plain
    /// HTTP for an insecure registry whose HTTPS fails, and learns its challenge. Credentials
    /// come from `options.docker_config` unless given.
    pub fn connect(
        domain: &str,
        options: &ClientOptions,
        credentials: Option<Credentials>,
    ) -> Result<Registry, RegistryError> {
        if domain.is_empty() {
            return Err(RegistryError::NoRegistry(domain.to_string()));
        }
        let credentials = match credentials {
            Some(credentials) => Some(credentials),
            None => options.docker_config.credentials(domain)?,
        };
        let host = if domain == kiln_cache::reference::DEFAULT_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            domain
        };
        let insecure = is_loopback(domain)
            || options
                .insecure_registries
                .iter()
                .any(|insecure| insecure == domain || insecure == host_of(domain));
        let agent = agent();
        let https = format!("https://{host}");
        let (base, challenge) = match ping(&agent, domain, &https) {
            Ok(challenge) => (https, challenge),
            Err(RegistryError::Connect { .. }) if insecure => {
                let http = format!("http://{host}");
                let challenge = ping(&agent, domain, &http)?;
                (http, challenge)
            }
            Err(error) => return Err(error),
        };
        Ok(Registry {
            domain: domain.to_string(),
            base,
            agent,
            challenge,
            credentials,
            tokens: Mutex::new(HashMap::new()),
            concurrency: options.concurrency.max(1),
            upload: options.upload,
        })
    }

    /// The registry's name as references use it (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// How the registry asked to be authenticated.
    pub fn challenge(&self) -> &Challenge {
        &self.challenge
    }

    /// Checks the credentials as `docker login` does: a Basic registry must accept them on
    /// `/v2/`, a token registry must issue a token for them (no scope). A registry without
    /// authentication accepts anything.
    pub fn verify_login(&self) -> Result<(), RegistryError> {
        match &self.challenge {
            Challenge::None => Ok(()),
            Challenge::Basic => {
                let url = format!("{}/v2/", self.base);
                let response = self.send(Method::GET, &url, &[], &[], Payload::Empty)?;
                drain(response);
                Ok(())
            }
            Challenge::Bearer { .. } => self.fetch_token(&[]).map(|_| ()),
        }
    }

    fn url(&self, repository: &str, rest: &str) -> String {
        format!("{}/v2/{repository}/{rest}", self.base)
    }

    /// Makes a location header absolute.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    /// The Authorization header for a set of scopes, fetching a token if needed.
    fn authorization(&self, scopes: &[String]) -> Result<Option<String>, RegistryError> {
        match &self.challenge {
            Challenge::None => Ok(None),
            Challenge::Basic => Ok(self.credentials.as_ref().map(Credentials::basic_header)),
            Challenge::Bearer { .. } => {
                let key = scopes.join(" ");
                {
                    let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(token) = tokens.get(&key)
                        && token.expires > Instant::now()
                    {
                        return Ok(Some(format!("Bearer {}", token.value)));
                    }
                }
                let token = self.fetch_token(scopes)?;
                let value = format!("Bearer {}", token.value);
                self.tokens
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, token);
                Ok(Some(value))
            }
        }
    }

    /// Asks the token server for a token covering `scopes`, with the credentials if any
    /// (`GET realm?service=..&scope=..`; an identity token is exchanged by
    /// `POST grant_type=refresh_token`, as the docker CLI does).
    fn fetch_token(&self, scopes: &[String]) -> Result<Token, RegistryError> {
        let Challenge::Bearer { realm, service } = &self.challenge else {
            return Err(self.protocol("no token server"));
        };
        let token_error = |what: String| RegistryError::Token {
            registry: self.domain.clone(),
            realm: realm.clone(),
            what,
        };
        let mut query = Vec::new();
        if let Some(service) = service {
            query.push(format!("service={}", encode_query(service)));
        }
        for scope in scopes {
            query.push(format!("scope={}", encode_query(scope)));
        }
        let identity = self
            .credentials
            .as_ref()
            .filter(|credentials| credentials.is_identity_token());
        let result = if let Some(identity) = identity {
            let mut form = vec![
                "grant_type=refresh_token".to_string(),
                format!("refresh_token={}", encode_query(&identity.password)),
                "client_id=kiln".to_string(),
            ];
            form.extend(query);
            let request = http::Request::builder()
                .method(Method::POST)
                .uri(realm.as_str())
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form.join("&"))
                .map_err(|error| token_error(error.to_string()))?;
            self.agent.run(request)
        } else {
            if let Some(credentials) = &self.credentials {
                query.push(format!("account={}", encode_query(&credentials.username)));
            }
            let separator = if realm.contains('?') { '&' } else { '?' };
            let url = if query.is_empty() {
                realm.clone()
            } else {
                format!("{realm}{separator}{}", query.join("&"))
            };
            let mut request = http::Request::builder().method(Method::GET).uri(url);
            if let Some(credentials) = &self.credentials {
                request = request.header("Authorization", credentials.basic_header());
            }
            let request = request
                .body(())
                .map_err(|error| token_error(error.to_string()))?;
            self.agent.run(request)
        };
        let mut response = result.map_err(|source| RegistryError::Connect {
            registry: realm.clone(),
            source: Box::new(source),
        })?;
        let status = response.status();
        let body = read_limited(&mut response, 1 << 20).unwrap_or_default();
        match status {
            StatusCode::UNAUTHORIZED => {
                let message = without_code(error_message(&body), "unauthorized");
                return Err(RegistryError::Unauthorized {
                    registry: self.domain.clone(),
                    message: if message.is_empty() {
                        "incorrect username or password".to_string()
                    } else {
                        message
                    },
                });
            }
            StatusCode::FORBIDDEN => {
                return Err(RegistryError::Denied {
                    registry: self.domain.clone(),
                    message: without_code(error_message(&body), "denied"),
                });
            }
            status if !status.is_success() => {
                return Err(token_error(format!(
                    "status {}: {}",
                    status.as_u16(),
                    error_message(&body)
                )));
            }
            _ => {}
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|error| token_error(format!("invalid answer: {error}")))?;
        let value = if answer.token.is_empty() {
            answer.access_token
        } else {
            answer.token
        };
        if value.is_empty() {
            return Err(token_error("the answer holds no token".to_string()));
        }
        // The spec's default lifetime is 60 s; refresh a little early.
        let lifetime = answer.expires_in.unwrap_or(60).max(10);
        Ok(Token {
            value,
            expires: Instant::now() + Duration::from_secs(lifetime - 5),
        })
    }

    /// Sends a request, authorised for `scopes`. 401 and 403 become errors naming the registry
    /// (after one retry with a fresh token, for payloads that can be sent again); every other
    /// status is the caller's to judge.
    pub(crate) fn send(
        &self,
        method: Method,
        url: &str,
        scopes: &[String],
        headers: &[(&str, &str)],
        mut payload: Payload<'_>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let replayable = !matches!(payload, Payload::Stream { .. });
        for attempt in 0..2 {
            let authorization = self.authorization(scopes)?;
            let mut request = http::Request::builder().method(method.clone()).uri(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(authorization) = authorization {
                request = request.header("Authorization", authorization);
            }
            let built = |error: http::Error| self.protocol(format!("request to {url}: {error}"));
            let result = match &mut payload {
                Payload::Empty => self.agent.run(request.body(()).map_err(built)?),
                Payload::Bytes(bytes) => self.agent.run(request.body(*bytes).map_err(built)?),
                Payload::Stream { reader, length } => {
                    let request = request
                        .header("Content-Length", length.to_string())
                        .body(ureq::SendBody::from_reader(*reader))
                        .map_err(built)?;
                    self.agent.run(request)
                }
            };
            let mut response = result.map_err(|source| RegistryError::Connect {
                registry: self.domain.clone(),
                source: Box::new(source),
            })?;
            match response.status() {
                StatusCode::UNAUTHORIZED => {
                    let body = read_limited(&mut response, 1 << 20).unwrap_or_default();
                    let retry = attempt == 0
                        && replayable
                        && matches!(self.challenge, Challenge::Bearer { .. });
                    if retry {
                        self.tokens
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&scopes.join(" "));
                        continue;
                    }
                    let message = without_code(error_message(&body), "unauthorized");
                    return Err(RegistryError::Unauthorized {
                        registry: self.domain.clone(),
                        message: if message.is_empty() {
                            if self.credentials.is_some() {
                                "incorrect username or password".to_string()
                            } else {
                                "authentication required".to_string()
                            }
                        } else {
                            message
                        },
                    });
                }
                StatusCode::FORBIDDEN => {
                    let body = read_limited(&mut response, 1 << 20).unwrap_or_default();
                    let message = without_code(error_message(&body), "denied");
                    return Err(RegistryError::Denied {
                        registry: self.domain.clone(),
                        message: if message.is_empty() {
                            "requested access to the resource is denied".to_string()
                        } else {
                            message
                        },
                    });
                }
                _ => return Ok(response),
            }
        }
        Err(self.protocol(format!(
            "{method} {url}: still unauthorized with a fresh token"
        )))
    }

    pub(crate) fn protocol(&self, what: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.domain.clone(),
            what: what.into(),
        }
    }

    fn unexpected(
        &self,
        method: &'static str,
        url: &str,
        mut response: Response<ureq::Body>,
    ) -> RegistryError {
        let body = read_limited(&mut response, 1 << 20).unwrap_or_default();
        RegistryError::Status {
            registry: self.domain.clone(),
            method,
            url: url.to_string(),
            status: response.status().as_u16(),
            message: error_message(&body),
        }
    }

    /// Fetches a manifest or index by tag or digest. `None` when the registry does not have it.
    /// When asked by digest, the bytes are verified against it.
    pub fn manifest(
        &self,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<FetchedManifest>, RegistryError> {
        let url = self.url(repository, &format!("manifests/{reference}"));
        let mut response = self.send(
            Method::GET,
            &url,
            scopes,
            &[("Accept", MANIFEST_ACCEPT)],
            Payload::Empty,
        )?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if status.is_success() => {}
            _ => return Err(self.unexpected("GET", &url, response)),
        }
        let media_type = header(&response, "Content-Type")
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let bytes =
            read_limited(&mut response, MANIFEST_LIMIT).map_err(|source| RegistryError::Read {
                registry: self.domain.clone(),
                what: format!("manifest {reference}"),
                source,
            })?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>()
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.domain.clone(),
                what: "manifest",
                expected,
                actual: digest,
            });
        }
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// The tags of a repository (`GET /v2/NAME/tags/list`, following `Link` pagination).
    pub fn tags(&self, repository: &str, scopes: &[String]) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut url = self.url(repository, "tags/list");
        for _ in 0..1000 {
            let mut response = self.send(Method::GET, &url, scopes, &[], Payload::Empty)?;
            match response.status() {
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::RepositoryUnknown {
                        registry: self.domain.clone(),
                        repository: repository.to_string(),
                    });
                }
                status if status.is_success() => {}
                _ => return Err(self.unexpected("GET", &url, response)),
            }
            let next = header(&response, "Link").and_then(|link| {
                let start = link.find('<')? + 1;
                let end = link[start..].find('>')? + start;
                Some(self.absolute(&link[start..end]))
            });
            let body = read_limited(&mut response, MANIFEST_LIMIT).map_err(|source| {
                RegistryError::Read {
                    registry: self.domain.clone(),
                    what: "the tag list".to_string(),
                    source,
                }
            })?;
            let list: TagList =
                serde_json::from_slice(&body).map_err(|source| RegistryError::Json {
                    registry: self.domain.clone(),
                    what: "the tag list".to_string(),
                    source,
                })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(tags)
    }

    /// Starts downloading a blob; the reader yields its bytes as they arrive (unverified: the
    /// caller hashes them).
    pub fn blob(
        &self,
        repository: &str,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<impl Read + use<>, RegistryError> {
        let url = self.url(repository, &format!("blobs/{digest}"));
        let response = self.send(Method::GET, &url, scopes, &[], Payload::Empty)?;
        match response.status() {
            status if status.is_success() => Ok(response.into_body().into_reader()),
            StatusCode::NOT_FOUND => Err(self.protocol(format!(
                "blob {digest} is unknown to repository {repository}"
            ))),
            _ => Err(self.unexpected("GET", &url, response)),
        }
    }

    /// Reads a small blob (a config) whole, verified against its digest.
    pub fn small_blob(
        &self,
        repository: &str,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::new();
        self.blob(repository, digest, scopes)?
            .take(CONFIG_LIMIT + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| RegistryError::Read {
                registry: self.domain.clone(),
                what: format!("blob {digest}"),
                source,
            })?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                registry: self.domain.clone(),
                what: "blob",
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether the repository has a blob (`HEAD`): its size if so.
    pub fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.url(repository, &format!("blobs/{digest}"));
        let response = self.send(Method::HEAD, &url, scopes, &[], Payload::Empty)?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(
                header(&response, "Content-Length")
                    .and_then(|length| length.parse().ok())
                    .unwrap_or(0),
            )),
            _ => Err(self.unexpected("HEAD", &url, response)),
        }
    }

    /// Starts an upload; with `mount_from`, asks the registry to mount the blob from that
    /// repository instead (`POST ?mount=DIGEST&from=REPO`). `Ok(None)` means it was mounted.
    pub fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&Digest, &str)>,
        scopes: &[String],
    ) -> Result<Option<String>, RegistryError> {
        let mut url = self.url(repository, "blobs/uploads/");
        if let Some((digest, from)) = mount {
            url.push_str(&format!("?mount={digest}&from={}", encode_query(from)));
        }
        let response = self.send(
            Method::POST,
            &url,
            scopes,
            &[("Content-Length", "0")],
            Payload::Empty,
        )?;
        let status = response.status();
        if status == StatusCode::CREATED && mount.is_some() {
            drain(response);
            return Ok(None);
        }
        if status != StatusCode::ACCEPTED {
            return Err(self.unexpected("POST", &url, response));
        }
        let location = header(&response, "Location")
            .ok_or_else(|| self.protocol("the upload answer has no Location"))?;
        let location = self.absolute(&location);
        drain(response);
        Ok(Some(location))
    }

    /// Uploads a blob's content to an upload location from [`Registry::start_upload`] and
    /// completes it with its digest.
    pub fn upload(
        &self,
        location: &str,
        digest: &Digest,
        size: u64,
        content: &mut dyn Read,
        mode: UploadMode,
        scopes: &[String],
    ) -> Result<(), RegistryError> {
        let mut location = location.to_string();
        let finish_url = |location: &str| {
            let separator = if location.contains('?') { '&' } else { '?' };
            format!("{location}{separator}digest={digest}")
        };
        let put_url;
        match mode {
            UploadMode::Monolithic => {
                put_url = finish_url(&location);
                let response = self.send(
                    Method::PUT,
                    &put_url,
                    scopes,
                    &[("Content-Type", "application/octet-stream")],
                    Payload::Stream {
                        reader: content,
                        length: size,
                    },
                )?;
                return self.upload_done(&put_url, response);
            }
            UploadMode::Chunked(chunk) => {
                let chunk = chunk.max(1);
                let mut offset = 0;
                while offset < size {
                    let length = chunk.min(size - offset);
                    let mut part = (&mut *content).take(length);
                    let range = format!("{offset}-{}", offset + length - 1);
                    let response = self.send(
                        Method::PATCH,
                        &location,
                        scopes,
                        &[
                            ("Content-Type", "application/octet-stream"),
                            ("Content-Range", &range),
                        ],
                        Payload::Stream {
                            reader: &mut part,
                            length,
                        },
                    )?;
                    if response.status() != StatusCode::ACCEPTED {
                        return Err(self.unexpected("PATCH", &location, response));
                    }
                    let next = header(&response, "Location")
                        .ok_or_else(|| self.protocol("the upload answer has no Location"))?;
                    location = self.absolute(&next);
                    drain(response);
                    offset += length;
                }
                put_url = finish_url(&location);
            }
        }
        let response = self.send(
            Method::PUT,
            &put_url,
            scopes,
            &[("Content-Length", "0")],
            Payload::Empty,
        )?;
        self.upload_done(&put_url, response)
    }

    fn upload_done(&self, url: &str, response: Response<ureq::Body>) -> Result<(), RegistryError> {
        if response.status() != StatusCode::CREATED {
            return Err(self.unexpected("PUT", url, response));
        }
        drain(response);
        Ok(())
    }

    /// Puts a manifest, byte for byte. Returns the digest the registry reports (checked against
    /// the bytes' own).
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
        scopes: &[String],
    ) -> Result<Digest, RegistryError> {
        let url = self.url(repository, &format!("manifests/{reference}"));
        let response = self.send(
            Method::PUT,
            &url,
            scopes,
            &[("Content-Type", media_type)],
            Payload::Bytes(bytes),
        )?;
        if response.status() != StatusCode::CREATED {
            return Err(self.unexpected("PUT", &url, response));
        }
        let digest = Digest::of(bytes);
        if let Some(reported) = header(&response, "Docker-Content-Digest")
            .and_then(|reported| reported.parse::<Digest>().ok())
            && reported != digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.domain.clone(),
                what: "pushed manifest",
                expected: digest,
                actual: reported,
            });
        }
        drain(response);
        Ok(digest)
    }
}

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// The `Content-Type` (without parameters); may be empty.
    pub media_type: String,
    pub digest: Digest,
}

/// The pull scope of a repository.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The push scope of a repository (pull too: pushing checks what exists).
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// `GET /v2/` without credentials: the challenge, if any.
fn ping(agent: &ureq::Agent, domain: &str, base: &str) -> Result<Challenge, RegistryError> {
    let url = format!("{base}/v2/");
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|source| RegistryError::Connect {
            registry: domain.to_string(),
            source: Box::new(source),
        })?;
    let status = response.status();
    let challenge = header(&response, "WWW-Authenticate");
    let body = read_limited(&mut response, 1 << 20).unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED {
        return Ok(challenge
            .as_deref()
            .and_then(Challenge::parse)
            .unwrap_or(Challenge::Basic));
    }
    if status.is_success() {
        return Ok(Challenge::None);
    }
    Err(RegistryError::Status {
        registry: domain.to_string(),
        method: "GET",
        url,
        status: status.as_u16(),
        message: error_message(&body),
    })
}

/// A registry message without the error code the error variant already names
/// (`unauthorized: authentication required` → `authentication required`).
fn without_code(message: String, code: &str) -> String {
    match message
        .strip_prefix(code)
        .and_then(|rest| rest.strip_prefix(": "))
    {
        Some(rest) => rest.to_string(),
        None => message,
    }
}

fn header(response: &Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// Reads a response body of at most `limit` bytes.
fn read_limited(response: &mut Response<ureq::Body>, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut reader = response.body_mut().as_reader().take(limit + 1);
    reader.read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the answer is larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads what is left of a body, so the connection can be used again.
fn drain(mut response: Response<ureq::Body>) {
    let _ = std::io::copy(
        &mut response.body_mut().as_reader().take(1 << 20),
        &mut std::io::sink(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_with_quoted_parameters() {
        let challenge = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            challenge,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".to_string(),
                service: Some("registry.docker.io".to_string()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(
            Challenge::parse("Bearer service=x"),
            None,
            "a realm is required"
        );
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for domain in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(domain), "{domain}");
        }
        for domain in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example:5000",
            "[::2]:5000",
        ] {
            assert!(!is_loopback(domain), "{domain}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
