//! How `kiln build` shows its progress: the renderers behind `--progress plain|tty|rawjson|quiet`.
//!
//! The builder reports [`Event`]s from several threads; a [`Display`] turns them into what
//! BuildKit's progress UI prints:
//! - `plain`: `#N [stage k/n] INSTRUCTION` lines, `#N 0.123 output`, `#N CACHED`, `#N DONE 1.2s`,
//!   `#N ERROR`, written as the events come, with the full, unclipped output of every step;
//! - `tty`: a live view redrawn about ten times a second with ANSI cursor movement (a
//!   `[+] Building 3.2s (7/9)` header, one ` => [stage k/n] ...  1.2s` line per step, the last
//!   lines of output of running steps), never taller than the terminal; when the build ends, the
//!   whole list once more (header `FINISHED` or `ERROR`) and the full log of a failed step;
//! - `rawjson`: one JSON object per line, each a BuildKit `SolveStatus` (`vertexes`, `logs`,
//!   `warnings`) carrying what one event changed;
//! - `quiet`: nothing but warnings.
//!
//! Owns no build logic; everything goes to stderr through [`crate::output`].

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_builder::build::{Event, Progress};

use crate::output;

/// Lines of output shown under a running step in the tty view (BuildKit shows six).
const TAIL_LINES: usize = 6;

/// How often the tty view is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// The size assumed when stderr is not a terminal but `--progress tty` was asked for.
const DEFAULT_SIZE: (usize, usize) = (25, 80);

/// The output of one step the tty view keeps (BuildKit clips step logs at 2 MiB too).
const LOG_LIMIT: usize = 2 << 20;

/// A `--progress` mode, `auto` already resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    RawJson,
    Quiet,
}

impl Mode {
    /// Parses `--progress`: `auto` is `tty` when stderr is a terminal, else `plain`; `-q`
    /// (`quiet`) wins over any mode.
    pub fn parse(text: &str, quiet: bool) -> Result<Mode, String> {
        let mode = match text {
            "auto" if std::io::stderr().is_terminal() => Mode::Tty,
            "auto" | "plain" => Mode::Plain,
            "tty" => Mode::Tty,
            "rawjson" => Mode::RawJson,
            "quiet" => Mode::Quiet,
            other => {
                return Err(format!(
                    "invalid --progress {other:?}: use auto, plain, tty, rawjson or quiet"
                ));
            }
        };
        Ok(if quiet { Mode::Quiet } else { mode })
    }
}

/// What is known of one step.
#[derive(Debug)]
struct Step {
    name: String,
    /// A digest standing for the step in `rawjson` (BuildKit's vertex digest).
    digest: String,
    started: Instant,
    started_at: chrono::DateTime<chrono::Utc>,
    /// How long it took, once it finished.
    elapsed: Option<Duration>,
    cached: bool,
    failed: bool,
    /// Its output lines, kept in `tty` mode only (printed when it fails), up to
    /// [`LOG_LIMIT`] bytes.
    lines: Vec<String>,
    /// Bytes in `lines`.
    logged: usize,
    /// The last [`TAIL_LINES`] lines (tty mode), for the live view.
    tail: VecDeque<String>,
    /// Sub-lines shown under the step (`=> => cache miss: ...`, `=> => naming to ...`).
    notes: Vec<String>,
}

impl Step {
    fn finished(&self) -> bool {
        self.elapsed.is_some() || self.cached || self.failed
    }
}

#[derive(Debug, Default)]
struct Steps {
    steps: BTreeMap<usize, Step>,
    warnings: Vec<String>,
    /// Lines the tty view drew last time (the cursor is below them).
    drawn: usize,
}

/// What the renderer thread and the builder's threads share.
#[derive(Debug)]
struct Shared {
    mode: Mode,
    explain: bool,
    start: Instant,
    steps: Mutex<Steps>,
}

/// The progress sink of one build: give it to [`kiln_builder::build::build`], then call
/// [`Display::exported`] and [`Display::finish`] once. In `tty` mode a thread redraws the view
/// until `finish` (or drop) stops it.
pub struct Display {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    redraw: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    /// Starts showing progress in `mode`; `explain` shows why steps missed the cache.
    pub fn start(mode: Mode, explain: bool) -> Display {
        let shared = Arc::new(Shared {
            mode,
            explain,
            start: Instant::now(),
            steps: Mutex::new(Steps::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let redraw = (mode == Mode::Tty).then(|| {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    shared.draw_live();
                    std::thread::park_timeout(REDRAW_EVERY);
                }
            })
        });
        Display {
            shared,
            stop,
            redraw,
        }
    }

    /// Shows the export as the last step: `kind` as BuildKit names it ("image", "client
    /// tarball"...), `lines` its sub-steps (`writing image sha256:... done`).
    pub fn exported(&self, kind: &str, lines: &[String]) {
        let shared = &self.shared;
        let mut steps = shared.lock();
        let step = steps.steps.keys().next_back().copied().unwrap_or(0) + 1;
        let total = shared.start.elapsed();
        match shared.mode {
            Mode::Quiet => return,
            Mode::Plain => {
                let mut text = format!("#{step} exporting to {kind}\n");
                for line in lines {
                    text.push_str(&format!("#{step} {line}\n"));
                }
                text.push_str(&format!("#{step} DONE {:.1}s\n", total.as_secs_f64()));
                output::err(&text);
            }
            Mode::Tty | Mode::RawJson => {}
        }
        let name = format!("exporting to {kind}");
        let mut exported = Step::new(step, name, Instant::now());
        exported.notes = lines.to_vec();
        exported.elapsed = Some(Duration::ZERO);
        if shared.mode == Mode::RawJson {
            let mut text = format!("{}\n", exported.vertex(None));
            for line in lines {
                text.push_str(&format!("{}\n", exported.log(1, line)));
            }
            output::err(&text);
        }
        steps.steps.insert(step, exported);
    }

    /// Ends the display: stops the tty view and draws it a last time, whole (header `FINISHED`
    /// when `error` is None), then the full output of failed steps; in `rawjson`, the error on
    /// the failed steps' vertexes. Then the warnings. Idempotent.
    pub fn finish(&mut self, error: Option<&str>) {
        self.stop_redraw();
        let shared = &self.shared;
        let mut steps = shared.lock();
        match shared.mode {
            Mode::Tty => {
                let frame = shared.frame(&steps, None, terminal_size().1, error.is_none());
                let mut text = shared.cursor_back(&steps);
                for line in &frame {
                    text.push_str(line);
                    text.push_str("\x1b[K\n");
                }
                text.push_str("\x1b[J");
                for step in steps.steps.values().filter(|step| step.failed) {
                    text.push_str(&format!("------\n > {}:\n", step.name));
                    for line in &step.lines {
                        text.push_str(&clean(line));
                        text.push('\n');
                    }
                    text.push_str("------\n");
                }
                steps.drawn = 0;
                output::err(&text);
            }
            Mode::RawJson => {
                if let Some(error) = error {
                    let failed: Vec<String> = steps
                        .steps
                        .values()
                        .filter(|step| step.failed)
                        .map(|step| step.vertex(Some(error)).to_string())
                        .collect();
                    for line in failed {
                        output::err(&format!("{line}\n"));
                    }
                }
            }
            Mode::Plain | Mode::Quiet => {}
        }
        let warnings = std::mem::take(&mut steps.warnings);
        drop(steps);
        for warning in warnings {
            if shared.mode == Mode::RawJson {
                let event = serde_json::json!({
                    "warnings": [{"level": 1, "short": base64(warning.as_bytes())}]
                });
                output::err(&format!("{event}\n"));
            } else {
                output::err(&format!("[Warning] {warning}\n"));
            }
        }
    }

    fn stop_redraw(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.redraw.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop_redraw();
    }
}

impl Progress for Display {
    fn event(&self, event: Event) {
        self.shared.event(event);
    }
}

impl Step {
    fn new(number: usize, name: String, started: Instant) -> Step {
        let digest =
            kiln_cache::digest::Digest::of(format!("kiln-step-{number}:{name}").as_bytes());
        Step {
            name,
            digest: digest.to_string(),
            started,
            started_at: chrono::Utc::now(),
            elapsed: None,
            cached: false,
            failed: false,
            lines: Vec::new(),
            logged: 0,
            tail: VecDeque::new(),
            notes: Vec::new(),
        }
    }

    /// Keeps a line of output, up to [`LOG_LIMIT`]; past it, one line saying so.
    fn keep(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        if self.logged > LOG_LIMIT {
            return;
        }
        self.logged += line.len() + 1;
        if self.logged > LOG_LIMIT {
            self.lines.push(format!(
                "[output clipped, log limit {}MiB reached]",
                LOG_LIMIT >> 20
            ));
        } else {
            self.lines.push(line);
        }
    }

    /// The step as a BuildKit `SolveStatus` carrying its vertex.
    fn vertex(&self, error: Option<&str>) -> serde_json::Value {
        let mut vertex = serde_json::json!({
            "digest": self.digest,
            "name": self.name,
            "started": rfc3339(self.started_at),
        });
        if let Some(elapsed) = self.elapsed {
            let completed = self.started_at
                + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero());
            vertex["completed"] = rfc3339(completed).into();
        } else if self.cached || self.failed {
            vertex["completed"] = rfc3339(chrono::Utc::now()).into();
        }
        if self.cached {
            vertex["cached"] = true.into();
        }
        if self.failed {
            vertex["error"] = error.unwrap_or("step failed").into();
        }
        serde_json::json!({ "vertexes": [vertex] })
    }

    /// A line of the step's output as a BuildKit `SolveStatus` carrying one log (`stream` 1 is
    /// stdout, 2 stderr; `data` base64, as Go encodes bytes).
    fn log(&self, stream: u8, line: &str) -> serde_json::Value {
        let mut data = line.as_bytes().to_vec();
        data.push(b'\n');
        serde_json::json!({
            "logs": [{
                "vertex": self.digest,
                "stream": stream,
                "data": base64(&data),
                "timestamp": rfc3339(chrono::Utc::now()),
            }]
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Steps> {
        self.steps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn event(&self, event: Event) {
        let mut steps = self.lock();
        if let Event::Warning { message } = event {
            steps.warnings.push(message);
            return;
        }
        // What to print now (plain and rawjson print as events come).
        let text = match event {
            Event::Started { step, name } => {
                let entry = Step::new(step, name.clone(), Instant::now());
                let text = match self.mode {
                    Mode::Plain => format!("#{step} {name}\n"),
                    Mode::RawJson => format!("{}\n", entry.vertex(None)),
                    Mode::Tty | Mode::Quiet => String::new(),
                };
                steps.steps.insert(step, entry);
                text
            }
            Event::Cached { step } => {
                let Some(entry) = steps.steps.get_mut(&step) else {
                    return;
                };
                entry.cached = true;
                entry.elapsed = Some(Duration::ZERO);
                match self.mode {
                    Mode::Plain => format!("#{step} CACHED\n"),
                    Mode::RawJson => format!("{}\n", entry.vertex(None)),
                    Mode::Tty | Mode::Quiet => String::new(),
                }
            }
            Event::Missed { step, reason } => {
                if !self.explain {
                    return;
                }
                let Some(entry) = steps.steps.get_mut(&step) else {
                    return;
                };
                let note = format!("cache miss: {reason}");
                let text = match self.mode {
                    Mode::Plain => format!("#{step} {note}\n"),
                    Mode::RawJson => format!("{}\n", entry.log(2, &note)),
                    Mode::Tty | Mode::Quiet => String::new(),
                };
                entry.notes.push(note);
                text
            }
            Event::Output { step, line } => {
                let Some(entry) = steps.steps.get_mut(&step) else {
                    return;
                };
                let text = match self.mode {
                    Mode::Plain => format!(
                        "#{step} {:.3} {line}\n",
                        entry.started.elapsed().as_secs_f64()
                    ),
                    Mode::RawJson => format!("{}\n", entry.log(1, &line)),
                    Mode::Tty | Mode::Quiet => String::new(),
                };
                if self.mode == Mode::Tty {
                    entry.keep(line);
                }
                text
            }
            Event::Done { step, elapsed } => {
                let Some(entry) = steps.steps.get_mut(&step) else {
                    return;
                };
                entry.elapsed = Some(elapsed);
                match self.mode {
                    Mode::Plain => format!("#{step} DONE {:.1}s\n", elapsed.as_secs_f64()),
                    Mode::RawJson => format!("{}\n", entry.vertex(None)),
                    Mode::Tty | Mode::Quiet => String::new(),
                }
            }
            Event::Failed { step } => {
                let Some(entry) = steps.steps.get_mut(&step) else {
                    return;
                };
                entry.failed = true;
                entry.elapsed = Some(entry.started.elapsed());
                match self.mode {
                    Mode::Plain => format!("#{step} ERROR\n"),
                    Mode::RawJson => format!("{}\n", entry.vertex(None)),
                    Mode::Tty | Mode::Quiet => String::new(),
                }
            }
            Event::Warning { .. } => String::new(),
        };
        drop(steps);
        if !text.is_empty() {
            output::err(&text);
        }
    }

    /// The escape sequence that moves the cursor back to the top of the last frame drawn.
    fn cursor_back(&self, steps: &Steps) -> String {
        if steps.drawn == 0 {
            "\r".to_string()
        } else {
            format!("\x1b[{}F", steps.drawn)
        }
    }

    /// Redraws the live view over the last one.
    fn draw_live(&self) {
        let (rows, cols) = terminal_size();
        let mut steps = self.lock();
        // One line fewer than the terminal: the cursor waits on the line below the frame.
        let frame = self.frame(&steps, Some(rows.saturating_sub(1).max(2)), cols, false);
        let mut text = self.cursor_back(&steps);
        for line in &frame {
            text.push_str(line);
            text.push_str("\x1b[K\n");
        }
        text.push_str("\x1b[J");
        steps.drawn = frame.len();
        drop(steps);
        output::err(&text);
    }

    /// The lines of the view, each shorter than `cols` characters. `rows`: a live frame, at
    /// most `rows` lines (finished steps dropped first, oldest first, then output lines); None:
    /// the final frame, every step, no output lines, the header saying FINISHED when
    /// `finished` (the build succeeded), else ERROR.
    fn frame(
        &self,
        steps: &Steps,
        rows: Option<usize>,
        cols: usize,
        finished: bool,
    ) -> Vec<String> {
        let cols = cols.max(20);
        let live = rows.is_some();
        let done = steps.steps.values().filter(|step| step.finished()).count();
        let failed = steps.steps.values().any(|step| step.failed);
        let status = match (live, finished && !failed) {
            (true, _) => "",
            (false, true) => " FINISHED",
            (false, false) => " ERROR",
        };
        let header = format!(
            "[+] Building {:.1}s ({done}/{}){status}",
            self.start.elapsed().as_secs_f64(),
            steps.steps.len()
        );
        // Each step: its line, its sub-lines, and (running, live) the tail of its output.
        let mut blocks: Vec<(bool, String, Vec<String>, Vec<String>)> = steps
            .steps
            .values()
            .map(|step| {
                let elapsed = step.elapsed.unwrap_or_else(|| step.started.elapsed());
                let state = if step.cached {
                    "CACHED "
                } else if step.failed {
                    "ERROR "
                } else {
                    ""
                };
                let line = fit(
                    &format!(" => {state}{}", clean(&step.name)),
                    &format!(" {:.1}s", elapsed.as_secs_f64()),
                    cols,
                );
                let notes = step
                    .notes
                    .iter()
                    .map(|note| fit(&format!(" => => {}", clean(note)), "", cols))
                    .collect();
                let tail = if live && !step.finished() {
                    step.tail
                        .iter()
                        .map(|line| fit(&format!(" => => # {}", clean(line)), "", cols))
                        .collect()
                } else {
                    Vec::new()
                };
                (step.finished(), line, notes, tail)
            })
            .collect();
        if let Some(rows) = rows {
            let count = |blocks: &[(bool, String, Vec<String>, Vec<String>)]| {
                1 + blocks
                    .iter()
                    .map(|(_, _, notes, tail)| 1 + notes.len() + tail.len())
                    .sum::<usize>()
            };
            while count(&blocks) > rows {
                if let Some(index) = blocks.iter().position(|block| block.0) {
                    blocks.remove(index);
                } else if let Some(block) = blocks
                    .iter_mut()
                    .filter(|block| !block.2.is_empty() || !block.3.is_empty())
                    .max_by_key(|block| block.2.len() + block.3.len())
                {
                    if block.3.is_empty() {
                        block.2.remove(0);
                    } else {
                        block.3.remove(0);
                    }
                } else if !blocks.is_empty() {
                    blocks.remove(0);
                } else {
                    break;
                }
            }
        }
        let mut lines = vec![fit(&header, "", cols)];
        for (_, line, notes, tail) in blocks {
            lines.push(line);
            lines.extend(notes);
            lines.extend(tail);
        }
        if let Some(rows) = rows {
            lines.truncate(rows);
        }
        lines
    }
}

/// The terminal's rows and columns (stderr's), or [`DEFAULT_SIZE`].
fn terminal_size() -> (usize, usize) {
    kiln_runtime::pty::window_size(std::io::stderr().as_fd())
        .filter(|size| size.rows > 0 && size.cols > 0)
        .map_or(DEFAULT_SIZE, |size| {
            (usize::from(size.rows), usize::from(size.cols))
        })
}

/// `left` and `right` on one line of at most `cols - 1` characters (the last column stays free
/// so the terminal never wraps): `left` cut when needed, `right` aligned to the right.
fn fit(left: &str, right: &str, cols: usize) -> String {
    let width = cols.saturating_sub(1);
    let right_len = right.chars().count();
    let room = width.saturating_sub(right_len);
    let mut text: String = left.chars().take(room).collect();
    let used = text.chars().count();
    if !right.is_empty() {
        text.push_str(&" ".repeat(room - used));
        text.push_str(right);
    }
    text
}

/// A line of output made safe for the live view: control characters (escape sequences, carriage
/// returns) would move the cursor, tabs would change the width.
fn clean(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Standard base64 with padding, as Go's encoding/json writes `[]byte`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"hello\n"), "aGVsbG8K");
    }

    #[test]
    fn lines_fit_the_terminal_width_with_the_time_on_the_right() {
        assert_eq!(fit(" => RUN true", " 0.1s", 20), " => RUN true   0.1s");
        assert_eq!(
            fit(" => RUN a very long command", " 0.1s", 20),
            " => RUN a very 0.1s"
        );
        assert_eq!(fit(" => => # out", "", 8), " => => ");
    }

    fn shared_with(count: usize, lines: usize) -> Shared {
        let shared = Shared {
            mode: Mode::Tty,
            explain: false,
            start: Instant::now(),
            steps: Mutex::new(Steps::default()),
        };
        for step in 1..=count {
            shared.event(Event::Started {
                step,
                name: format!("[stage-0 {step}/{count}] RUN step {step}"),
            });
            for line in 0..lines {
                shared.event(Event::Output {
                    step,
                    line: format!("line {line}"),
                });
            }
        }
        shared
    }

    #[test]
    fn the_live_view_never_exceeds_the_terminal_height() {
        let shared = shared_with(10, 20);
        shared.event(Event::Done {
            step: 1,
            elapsed: Duration::from_millis(100),
        });
        let steps = shared.lock();
        let frame = shared.frame(&steps, Some(8), 40, false);
        assert_eq!(frame.len(), 8, "{frame:#?}");
        assert!(frame[0].starts_with("[+] Building "), "{frame:#?}");
        assert!(frame[0].ends_with("(1/10)"), "{frame:#?}");
        assert!(frame.iter().all(|line| line.chars().count() < 40));
        // The finished step makes room first.
        assert!(!frame.iter().any(|line| line.contains("RUN step 1 ")));
    }

    #[test]
    fn running_steps_show_the_last_six_lines_of_output() {
        let shared = shared_with(1, 10);
        let steps = shared.lock();
        let frame = shared.frame(&steps, Some(30), 80, false);
        let tail: Vec<&String> = frame
            .iter()
            .filter(|l| l.starts_with(" => => # "))
            .collect();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0].as_str(), " => => # line 4");
        assert_eq!(tail[5].as_str(), " => => # line 9");
    }

    #[test]
    fn a_steps_kept_log_is_clipped_but_the_live_tail_goes_on() {
        let mut step = Step::new(1, "RUN yes".to_string(), Instant::now());
        let line = "y".repeat(1023);
        for _ in 0..3000 {
            step.keep(line.clone());
        }
        step.keep("last".to_string());
        assert_eq!(
            step.lines.len(),
            2048 + 1,
            "2 MiB of 1 KiB lines, then the notice"
        );
        assert_eq!(
            step.lines.last().unwrap(),
            "[output clipped, log limit 2MiB reached]"
        );
        assert_eq!(step.tail.len(), TAIL_LINES);
        assert_eq!(step.tail.back().unwrap(), "last");
    }

    #[test]
    fn the_final_view_lists_every_step_and_says_finished() {
        let shared = shared_with(3, 2);
        shared.event(Event::Cached { step: 1 });
        for step in 2..=3 {
            shared.event(Event::Done {
                step,
                elapsed: Duration::from_millis(1200),
            });
        }
        let steps = shared.lock();
        let frame = shared.frame(&steps, None, 80, true);
        assert!(frame[0].ends_with("(3/3) FINISHED"), "{frame:#?}");
        assert!(frame[1].starts_with(" => CACHED [stage-0 1/3] RUN step 1"));
        assert!(frame[3].ends_with(" 1.2s"), "{frame:#?}");
        assert_eq!(
            frame.len(),
            4,
            "no output lines in the final view: {frame:#?}"
        );
    }
}
