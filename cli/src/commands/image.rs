//! Image commands: `images`, `tag`, `rmi`, `image prune`, `inspect`, `history`, `import`.

use std::io::Read;
use std::path::PathBuf;

use kiln_cache::digest::Digest;
use kiln_cache::image::ImageConfig;
use kiln_cache::import::{ImportOptions, import_rootfs};
use kiln_cache::reference::Reference;
use kiln_cache::store::{ImageRecord, Store};
use kiln_template::Format;
use serde_json::{Value, json};

use super::{Global, familiar, open_store};
use crate::output;
use crate::{Exit, human};

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Show all images (kiln keeps no intermediate images, so the same as without)
    #[arg(short = 'a', long)]
    all: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Show digests
    #[arg(long)]
    digests: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Filter: dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, since=IMAGE
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Format: table, json, or a Go template
    #[arg(long)]
    format: Option<String>,
    /// Only images of this repository (and tag)
    repository: Option<String>,
}

/// One row of `kiln images`: an image under one of its tags.
struct Row<'a> {
    image: &'a ImageRecord,
    repository: String,
    tag: String,
    digest: String,
}

pub fn images(global: &Global, args: ImagesArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let images = match store.images() {
        Ok(images) => images,
        Err(error) => return output::error_of(&error),
    };
    let filters = match Filters::parse(&store, &args.filters) {
        Ok(filters) => filters,
        Err(message) => return output::error(message),
    };
    let mut rows = Vec::new();
    for image in &images {
        if !filters.keep(&store, image) {
            continue;
        }
        let digest = image
            .digests
            .first()
            .and_then(|reference| reference.split_once('@'))
            .map_or("<none>".to_string(), |(_, digest)| digest.to_string());
        if image.tags.is_empty() {
            if filters.dangling != Some(false) && args.repository.is_none() {
                rows.push(Row {
                    image,
                    repository: "<none>".into(),
                    tag: "<none>".into(),
                    digest,
                });
            }
            continue;
        }
        for tag in &image.tags {
            let Ok(reference) = Reference::parse(tag) else {
                continue;
            };
            let repository = reference.familiar_name();
            let tag_name = reference.tag().unwrap_or("<none>").to_string();
            if !filters.matches_reference(&repository, &tag_name)
                || !matches_repository(&args.repository, &repository, &tag_name)
            {
                continue;
            }
            rows.push(Row {
                image,
                repository,
                tag: tag_name,
                digest: digest.clone(),
            });
        }
    }
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        let mut text = String::new();
        for row in &rows {
            let id = if args.no_trunc {
                row.image.id.to_string()
            } else {
                row.image.id.short()
            };
            if seen.insert(id.clone()) {
                text.push_str(&id);
                text.push('\n');
            }
        }
        output::out(&text);
        return Exit::Success;
    }
    let values: Vec<Value> = rows
        .iter()
        .map(|row| {
            let created = row.image.created.as_deref();
            json!({
                "ID": if args.no_trunc { row.image.id.to_string() } else { row.image.id.short() },
                "Repository": row.repository,
                "Tag": row.tag,
                "Digest": row.digest,
                "CreatedSince": human::since(created),
                "CreatedAt": created.unwrap_or_default(),
                "Size": human::size(row.image.size),
                "VirtualSize": human::size(row.image.size),
                "SharedSize": "N/A",
                "UniqueSize": "N/A",
                "Containers": "N/A",
            })
        })
        .collect();
    let default = if args.digests {
        "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    } else {
        "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    };
    render(args.format.as_deref(), default, &values, &|field| {
        Some(
            match field {
                "ID" => "IMAGE ID",
                "CreatedSince" => "CREATED",
                "CreatedAt" => "CREATED AT",
                "VirtualSize" => "VIRTUAL SIZE",
                "SharedSize" => "SHARED SIZE",
                "UniqueSize" => "UNIQUE SIZE",
                other => return Some(other.to_ascii_uppercase()),
            }
            .to_string(),
        )
    })
}

/// Renders rows with `--format` (or the command's default table).
pub fn render(
    format: Option<&str>,
    default: &str,
    rows: &[Value],
    headers: &dyn Fn(&str) -> Option<String>,
) -> Exit {
    let format = match Format::parse_or_default(format.unwrap_or(""), default) {
        Ok(format) => format,
        Err(error) => return output::error(format!("invalid --format: {error}")),
    };
    match format.render(rows, headers) {
        Ok(text) => {
            output::out(&text);
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

/// `kiln images REPOSITORY[:TAG]`: the familiar repository must match; a tag, when given, too.
fn matches_repository(wanted: &Option<String>, repository: &str, tag: &str) -> bool {
    let Some(wanted) = wanted else { return true };
    let Ok(reference) = Reference::parse(wanted) else {
        return false;
    };
    reference.familiar_name() == repository
        && reference.tag().is_none_or(|wanted_tag| wanted_tag == tag)
}

/// `--filter` values of `kiln images`.
#[derive(Default)]
struct Filters {
    dangling: Option<bool>,
    references: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    before: Option<i64>,
    since: Option<i64>,
}

impl Filters {
    fn parse(store: &Store, filters: &[String]) -> Result<Filters, String> {
        let mut parsed = Filters::default();
        for filter in filters {
            let Some((key, value)) = filter.split_once('=') else {
                return Err(format!(
                    "bad format of filter (expected name=value): {filter}"
                ));
            };
            match key {
                "dangling" => match value.to_ascii_lowercase().as_str() {
                    "true" | "1" => parsed.dangling = Some(true),
                    "false" | "0" => parsed.dangling = Some(false),
                    _ => return Err(format!("invalid filter 'dangling={value}'")),
                },
                "reference" => parsed.references.push(value.to_string()),
                "label" => parsed.labels.push(match value.split_once('=') {
                    Some((key, value)) => (key.to_string(), Some(value.to_string())),
                    None => (value.to_string(), None),
                }),
                "before" | "since" => {
                    let id = store.resolve(value).map_err(|error| error.to_string())?;
                    let added = store.image(&id).map_err(|error| error.to_string())?.added;
                    if key == "before" {
                        parsed.before = Some(added);
                    } else {
                        parsed.since = Some(added);
                    }
                }
                _ => return Err(format!("invalid filter '{key}'")),
            }
        }
        Ok(parsed)
    }

    fn keep(&self, store: &Store, image: &ImageRecord) -> bool {
        let dangling = image.tags.is_empty();
        if self.dangling.is_some_and(|wanted| wanted != dangling) {
            return false;
        }
        if self.before.is_some_and(|before| image.added >= before)
            || self.since.is_some_and(|since| image.added <= since)
        {
            return false;
        }
        if !self.labels.is_empty() {
            let labels = image_config(store, image)
                .and_then(|config| config.config.labels)
                .unwrap_or_default();
            let all = self
                .labels
                .iter()
                .all(|(key, value)| match (labels.get(key), value) {
                    (Some(_), None) => true,
                    (Some(actual), Some(value)) => actual == value,
                    (None, _) => false,
                });
            if !all {
                return false;
            }
        }
        if !self.references.is_empty() && dangling {
            return false;
        }
        true
    }

    /// `reference=PATTERN`: a glob over `repository` or `repository:tag` (Go's path.Match).
    fn matches_reference(&self, repository: &str, tag: &str) -> bool {
        self.references.is_empty()
            || self.references.iter().any(|pattern| {
                glob(pattern, repository) || glob(pattern, &format!("{repository}:{tag}"))
            })
    }
}

/// Go's `path.Match`: `*` and `?` do not cross `/`; `[...]` classes with `^`/`!` negation.
fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                '?' if text[t] != '/' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                '[' => {
                    if let Some((true, next)) = class(&pattern, p, text[t]) {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                '\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                c if c == text[t] && c != '?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_t)) if text[star_t] != '/' => {
                star = Some((star_p, star_t + 1));
                p = star_p + 1;
                t = star_t + 1;
            }
            _ => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `pattern[start] == '['`: (matched, index after `]`).
fn class(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut index = start + 1;
    let negated = matches!(pattern.get(index), Some('^' | '!'));
    if negated {
        index += 1;
    }
    let mut matched = false;
    let mut first = true;
    while index < pattern.len() {
        if pattern[index] == ']' && !first {
            return Some((matched != negated && c != '/', index + 1));
        }
        first = false;
        let low = pattern[index];
        if pattern.get(index + 1) == Some(&'-')
            && pattern.get(index + 2).is_some_and(|high| *high != ']')
        {
            let high = pattern[index + 2];
            matched |= low <= c && c <= high;
            index += 3;
        } else {
            matched |= low == c;
            index += 1;
        }
    }
    None
}

/// The config of an image, if it reads.
fn image_config(store: &Store, image: &ImageRecord) -> Option<ImageConfig> {
    let bytes = store.blobs().read(&image.id).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image (name, name:tag or ID)
    source: String,
    /// The new reference
    target: String,
}

pub fn tag(global: &Global, args: TagArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let target = match Reference::parse(&args.target) {
        Ok(target) if target.digest().is_none() => target.with_default_tag(),
        Ok(_) => {
            return output::error(format!(
                "refusing to create a tag with a digest reference: {}",
                args.target
            ));
        }
        Err(error) => return output::error(format!("{}: {error}", args.target)),
    };
    let result = store
        .resolve(&args.source)
        .and_then(|id| store.tag(&target.to_string(), &id));
    match result {
        Ok(()) => Exit::Success,
        Err(error) => output::error_of(&error),
    }
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short = 'f', long)]
    force: bool,
    /// Do not delete untagged parents (kiln keeps no parent images; accepted for compatibility)
    #[arg(long = "no-prune")]
    no_prune: bool,
    /// Images to remove
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn rmi(global: &Global, args: RmiArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut exit = Exit::Success;
    for name in &args.images {
        match store.remove(name, args.force) {
            Ok(removals) => output::out(
                &removals
                    .iter()
                    .map(|removal| format!("{removal}\n"))
                    .collect::<String>(),
            ),
            Err(error) => {
                output::err(&format!("Error: {error}\n"));
                exit = Exit::Failure;
            }
        }
    }
    if !args.no_prune
        && let Err(error) = store.collect_garbage()
    {
        return output::error_of(&error);
    }
    exit
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation (kiln never prompts)
    #[arg(short = 'f', long)]
    force: bool,
}

pub fn prune(global: &Global, args: PruneArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let removals = match store.prune_images(args.all) {
        Ok(removals) => removals,
        Err(error) => return output::error_of(&error),
    };
    let freed = match store.collect_garbage() {
        Ok(freed) => freed,
        Err(error) => return output::error_of(&error),
    };
    let mut text = String::new();
    if !removals.is_empty() {
        text.push_str("Deleted Images:\n");
        for removal in &removals {
            // Docker's prune report: `untagged: busybox:latest`, `deleted: sha256:...`.
            let line = removal.to_string();
            let mut chars = line.chars();
            let first = chars
                .next()
                .map(|c| c.to_ascii_lowercase())
                .unwrap_or_default();
            text.push_str(&format!("{first}{}\n", chars.as_str()));
        }
        text.push('\n');
    }
    text.push_str(&format!("Total reclaimed space: {}\n", human::size(freed)));
    output::out(&text);
    Exit::Success
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Format the output using a Go template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Only inspect objects of this type (image; containers come with the runtime)
    #[arg(long = "type")]
    kind: Option<String>,
    /// Images to inspect
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn inspect(global: &Global, args: InspectArgs) -> Exit {
    let (containers, images) = match args.kind.as_deref() {
        None => (true, true),
        Some("container") => (true, false),
        Some("image") => (false, true),
        Some(other) => {
            return output::error(format!(
                "unsupported --type {other:?}: expected container or image"
            ));
        }
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut objects = Vec::new();
    let mut exit = Exit::Success;
    for name in &args.names {
        // As docker: a container of that name first, then an image.
        if containers && let Ok(container) = store.container(name) {
            objects.push(super::container::inspect_json(&store, &container));
            continue;
        }
        match store
            .resolve(name)
            .and_then(|id| store.image(&id))
            .ok()
            .filter(|_| images)
        {
            Some(image) => objects.push(inspect_json(&store, &image)),
            None => {
                output::err(&format!("Error: No such object: {name}\n"));
                exit = Exit::Failure;
            }
        }
    }
    match args.format {
        Some(format) => {
            let result = Format::parse(&format).and_then(|format| {
                objects
                    .iter()
                    .map(|object| format.template().render(object))
                    .collect::<Result<Vec<_>, _>>()
            });
            match result {
                Ok(lines) => output::out(
                    &lines
                        .iter()
                        .map(|line| format!("{line}\n"))
                        .collect::<String>(),
                ),
                Err(error) => return output::error(format!("template parsing error: {error}")),
            }
        }
        None => output::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&objects).unwrap_or_default()
        )),
    }
    exit
}

/// Docker's image inspect object.
fn inspect_json(store: &Store, image: &ImageRecord) -> Value {
    let config = image_config(store, image).unwrap_or_default();
    let comment = config
        .history
        .last()
        .and_then(|history| history.comment.clone())
        .unwrap_or_default();
    let lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|layer| store.snapshot_path(&layer.chain_id).display().to_string())
        .collect();
    json!({
        "Id": image.id.to_string(),
        "RepoTags": image.tags.iter().map(|tag| familiar(tag)).collect::<Vec<_>>(),
        "RepoDigests": image.digests.iter().map(|digest| familiar(digest)).collect::<Vec<_>>(),
        "Parent": "",
        "Comment": comment,
        "Created": config.created.clone().unwrap_or_default(),
        "DockerVersion": "",
        "Author": config.author.clone().unwrap_or_default(),
        "Config": serde_json::to_value(&config.config).unwrap_or(Value::Null),
        "Architecture": config.architecture,
        "Variant": config.variant,
        "Os": config.os,
        "Size": image.size,
        "GraphDriver": {
            "Name": "overlay",
            "Data": { "LowerDir": lower.join(":") },
        },
        "RootFS": {
            "Type": "layers",
            "Layers": config.rootfs.diff_ids.iter().map(Digest::to_string).collect::<Vec<_>>(),
        },
        "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
    })
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    human: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Format: table, json, or a Go template
    #[arg(long)]
    format: Option<String>,
    /// The image
    image: String,
}

pub fn history(global: &Global, args: HistoryArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let image = match store.resolve(&args.image).and_then(|id| store.image(&id)) {
        Ok(image) => image,
        Err(error) => return output::error_of(&error),
    };
    let config = image_config(&store, &image).unwrap_or_default();
    let mut layers = image.layers.iter();
    let mut rows: Vec<Value> = config
        .history
        .iter()
        .map(|entry| {
            let size = if entry.empty_layer { 0 } else { layers.next().map_or(0, |layer| layer.size) };
            let created_by = entry.created_by.clone().unwrap_or_default();
            let created_by = if args.no_trunc || created_by.chars().count() <= 45 {
                created_by
            } else {
                format!("{}…", created_by.chars().take(44).collect::<String>())
            };
            json!({
                "ID": "<missing>",
                "CreatedSince": if args.human { human::since(entry.created.as_deref()) } else { entry.created.clone().unwrap_or_default() },
                "CreatedAt": entry.created.clone().unwrap_or_default(),
                "CreatedBy": created_by,
                "Size": if args.human { human::size(size) } else { size.to_string() },
                "Comment": entry.comment.clone().unwrap_or_default(),
            })
        })
        .collect();
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first["ID"] = Value::String(if args.no_trunc {
            image.id.to_string()
        } else {
            image.id.short()
        });
    }
    if args.quiet {
        let ids: String = rows
            .iter()
            .filter_map(|row| row["ID"].as_str())
            .map(|id| format!("{id}\n"))
            .collect();
        output::out(&ids);
        return Exit::Success;
    }
    render(
        args.format.as_deref(),
        "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}",
        &rows,
        &|field| {
            Some(
                match field {
                    "ID" => "IMAGE",
                    "CreatedSince" => "CREATED",
                    "CreatedAt" => "CREATED AT",
                    "CreatedBy" => "CREATED BY",
                    other => return Some(other.to_ascii_uppercase()),
                }
                .to_string(),
            )
        },
    )
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction(s) to the created image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL, ...)
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// Set a commit message for the imported image
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// The root file system tarball: a file, an http(s) URL, or `-` for stdin (plain, gzip,
    /// zstd, xz or bzip2)
    file: PathBuf,
    /// The name to give the image
    reference: Option<String>,
}

pub fn import(global: &Global, args: ImportArgs) -> Exit {
    let reference = match args.reference.as_deref().map(Reference::parse).transpose() {
        Ok(reference) => reference,
        Err(error) => {
            return output::error(format!("{}: {error}", args.reference.unwrap_or_default()));
        }
    };
    let mut config = kiln_cache::image::ContainerConfig::default();
    for change in &args.changes {
        let dockerfile = match kiln_parser::parse(&format!("FROM scratch\n{change}\n")) {
            Ok(dockerfile) => dockerfile,
            Err(error) => return output::error(format!("invalid -c {change:?}: {error}")),
        };
        for statement in &dockerfile.statements[1..] {
            if let Err(error) = kiln_builder::config::apply(&mut config, statement, '\\') {
                return output::error(format!("invalid -c {change:?}: {error}"));
            }
        }
    }
    let mut store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let source = args.file.display().to_string();
    let reader = match open_archive(&source) {
        Ok(reader) => reader,
        Err(message) => return output::error(message),
    };
    let options = ImportOptions {
        config,
        message: args.message,
        source,
        created: None,
        reference,
        compression: kiln_cache::layer::Compression::Gzip,
    };
    match import_rootfs(&mut store, reader, &options) {
        Ok(id) => {
            output::out(&format!("{id}\n"));
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

/// Opens what `kiln import` reads: stdin for `-`, an `http://` or `https://` URL (streamed, not
/// downloaded first), or a file.
fn open_archive(source: &str) -> Result<Box<dyn Read>, String> {
    if source == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let response = ureq::get(source)
            .call()
            .map_err(|error| format!("downloading {source}: {error}"))?;
        return Ok(Box::new(response.into_body().into_reader()));
    }
    std::fs::File::open(source)
        .map(|file| Box::new(file) as Box<dyn Read>)
        .map_err(|error| format!("{source}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn reference_patterns_match_as_go_path_match() {
        assert!(glob("busy*", "busybox"));
        assert!(glob("*:latest", "busybox:latest"));
        assert!(!glob("*", "team/app"), "* does not cross /");
        assert!(glob("*/*", "team/app"));
        assert!(glob("app:v?", "app:v1"));
        assert!(glob("app:v[0-9]", "app:v7"));
        assert!(!glob("app:v[!0-9]", "app:v7"));
        assert!(!glob("app", "app:1"));
    }
}
