//! `COPY/ADD --chmod`: octal (`0755`) or chmod(1)'s symbolic notation (`u+x,go=rX`, `g=u`),
//! as the stable Dockerfile syntax accepts since 1.14 (BuildKit parses it with
//! `tonistiigi/dchapes-mode`).
//!
//! An octal mode replaces the permission bits of every copied entry; a symbolic one is applied
//! to each entry's own mode (its source mode), so `X` makes directories and already
//! executable files executable and nothing else. No umask: a clause without `ugoa` means `a`.

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Replaces the permission bits (`0o7777` at most).
    Octal(u32),
    /// Applied clause by clause to each entry's mode.
    Symbolic(Vec<Clause>),
}

/// One comma-separated clause: who, then actions (`u+x-w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Mask of the `u`, `g`, `o` permission bits the clause is about (with their special bits).
    who: u32,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    op: char,
    permissions: Permissions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Permissions {
    /// Letters out of `rwxXst`.
    Letters(String),
    /// Copy another class's bits: `u`, `g` or `o`.
    Copy(char),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

/// Why a `--chmod` value is not a mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --chmod={0}: expected an octal mode (0755) or chmod's symbolic notation (u+x,go=rX)"
)]
pub struct ChmodError(String);

impl Chmod {
    /// Parses octal (at most `7777`) or symbolic notation.
    pub fn parse(text: &str) -> Result<Chmod, ChmodError> {
        let bad = || ChmodError(text.to_string());
        if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
            return u32::from_str_radix(text, 8)
                .ok()
                .filter(|mode| *mode <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(bad);
        }
        let mut clauses = Vec::new();
        for clause in text.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => USER,
                    'g' => GROUP,
                    'o' => OTHER,
                    'a' => USER | GROUP | OTHER,
                    _ => break,
                };
                chars.next();
            }
            let mut actions = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let mut letters = String::new();
                let mut copy = None;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' | 'w' | 'x' | 'X' | 's' | 't' if copy.is_none() => letters.push(c),
                        'u' | 'g' | 'o' if letters.is_empty() && copy.is_none() => copy = Some(c),
                        _ => break,
                    }
                    chars.next();
                }
                actions.push(Action {
                    op,
                    permissions: match copy {
                        Some(class) => Permissions::Copy(class),
                        None => Permissions::Letters(letters),
                    },
                });
            }
            if actions.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, actions });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode of an entry whose own permission bits are `mode` (`is_dir` for `X`).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(octal) => *octal,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for clause in clauses {
                    mode = clause.apply(mode, is_dir);
                }
                mode
            }
        }
    }
}

impl Clause {
    fn apply(&self, mut mode: u32, is_dir: bool) -> u32 {
        // No `ugoa`: all classes (chmod(1) would mask with the umask; BuildKit uses none).
        let (who, explicit) = if self.who == 0 {
            (USER | GROUP | OTHER, false)
        } else {
            (self.who, true)
        };
        for action in &self.actions {
            let bits = match &action.permissions {
                Permissions::Copy(class) => {
                    let source = match class {
                        'u' => (mode >> 6) & 0o7,
                        'g' => (mode >> 3) & 0o7,
                        _ => mode & 0o7,
                    };
                    (source << 6 | source << 3 | source) & who & 0o777
                }
                Permissions::Letters(letters) => {
                    let mut bits = 0;
                    for letter in letters.chars() {
                        bits |= match letter {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            // Sticky only when the clause names others or nobody.
                            't' if !explicit || self.who & OTHER == OTHER => 0o1000,
                            _ => 0,
                        };
                    }
                    bits & who
                }
            };
            match action.op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                _ => {
                    // `=`: the named classes get exactly these bits (directories keep their
                    // set-id bits unless named, as chmod(1) does).
                    let mut clear = who & 0o777;
                    if !is_dir {
                        clear |= who & 0o7000;
                    }
                    mode = (mode & !clear) | bits;
                }
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(text).unwrap().apply(mode, is_dir)
    }

    #[test]
    fn octal_replaces_the_mode() {
        assert_eq!(Chmod::parse("755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(Chmod::parse("0644"), Ok(Chmod::Octal(0o644)));
        assert!(Chmod::parse("99999").is_err());
        assert!(Chmod::parse("8").is_err());
    }

    #[test]
    fn symbolic_modes_follow_chmod() {
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("g-w,o=r", 0o666, false), 0o644);
        assert_eq!(apply("go=", 0o755, false), 0o700);
        assert_eq!(apply("g=u", 0o740, false), 0o770);
        assert_eq!(apply("u=rwX,go=rX", 0o600, false), 0o644);
        assert_eq!(apply("u=rwX,go=rX", 0o700, false), 0o755);
        assert_eq!(apply("u=rwX,go=rX", 0o700, true), 0o755);
        assert_eq!(apply("a=rX", 0o640, true), 0o555);
        assert_eq!(apply("u+r-w", 0o200, false), 0o400);
        assert_eq!(apply("u+s", 0o755, false), 0o4755);
        assert_eq!(apply("+t", 0o755, true), 0o1755);
        assert_eq!(apply("o-rwx", 0o777, false), 0o770);
    }

    #[test]
    fn malformed_modes_are_refused() {
        for bad in ["", "u", "u+y", "z+x", "u+x,", "rwx"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
    }
}
