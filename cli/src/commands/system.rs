//! `kiln system check|df|prune` and `kiln version`.

use serde_json::json;

use super::{Global, open_store};
use crate::commands::image::render;
use crate::output;
use crate::{Exit, human};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Verify the store: every referenced blob present and intact, every snapshot present
    Check,
    /// Show the space used by images, layers, containers and build cache
    Df,
    /// Remove unused data: dangling images (all unused images with -a) and unreferenced content
    Prune(super::image::PruneArgs),
}

pub fn run(global: &Global, command: Command) -> Exit {
    match command {
        Command::Check => check(global),
        Command::Df => df(global),
        Command::Prune(args) => super::image::prune(global, args),
    }
}

fn check(global: &Global) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    match store.check() {
        Ok(problems) if problems.is_empty() => {
            output::out(&format!(
                "store at {} is consistent\n",
                store.layout().root().display()
            ));
            Exit::Success
        }
        Ok(problems) => {
            let text: String = problems
                .iter()
                .map(|problem| format!("{problem}\n"))
                .collect();
            output::err(&text);
            output::err(&format!(
                "kiln: the store has {} problem(s)\n",
                problems.len()
            ));
            Exit::Failure
        }
        Err(error) => output::error_of(&error),
    }
}

fn df(global: &Global) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let images = match store.images() {
        Ok(images) => images,
        Err(error) => return output::error_of(&error),
    };
    let active = images.iter().filter(|image| !image.tags.is_empty()).count();
    let size: u64 = images.iter().map(|image| image.size).sum();
    let reclaimable: u64 = images
        .iter()
        .filter(|image| image.tags.is_empty())
        .map(|image| image.size)
        .sum();
    let percent = |part: u64, whole: u64| {
        (part * 100)
            .checked_div(whole)
            .map_or("0%".to_string(), |percent| format!("{percent}%"))
    };
    let containers = kiln_cache::store::directory_size(&store.layout().containers());
    let rows = [
        json!({"Type": "Images", "TotalCount": images.len(), "Active": active, "Size": human::size(size),
               "Reclaimable": format!("{} ({})", human::size(reclaimable), percent(reclaimable, size))}),
        json!({"Type": "Containers", "TotalCount": 0, "Active": 0, "Size": human::size(containers), "Reclaimable": "0B (0%)"}),
        json!({"Type": "Local Volumes", "TotalCount": 0, "Active": 0, "Size": "0B", "Reclaimable": "0B"}),
        json!({"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": "0B", "Reclaimable": "0B"}),
    ];
    render(
        None,
        "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}",
        &rows,
        &|field| {
            Some(
                match field {
                    "Type" => "TYPE",
                    "TotalCount" => "TOTAL",
                    "Active" => "ACTIVE",
                    "Size" => "SIZE",
                    "Reclaimable" => "RECLAIMABLE",
                    other => other,
                }
                .to_string(),
            )
        },
    )
}
