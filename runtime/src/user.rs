//! Resolves Docker's `-u` / `USER` value against the container's own `/etc/passwd` and
//! `/etc/group`, with the rules of moby's `GetExecUser`.
//!
//! Pure: takes the files' contents (the caller reads them inside the container root). A
//! missing file is passed as empty text.

use crate::error::ContainerError;

/// The identity the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids: the primary group first (moby's `getUser` always adds it to
    /// `AdditionalGids`, so `id` shows `groups=GID`), then memberships in file order, no
    /// duplicates.
    pub groups: Vec<u32>,
    /// Home directory from passwd, `/` when the user is not listed (Docker's default).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next();
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let _gecos = fields.next();
        let home = fields.next().unwrap_or("");
        Some(PasswdEntry {
            name,
            uid,
            gid,
            home,
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next();
        let gid = fields.next()?.parse().ok()?;
        let members = fields
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|member| !member.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

/// Linux ids are unsigned 32-bit, but Docker (and runc) reject values above `i32::MAX`.
fn parse_id(text: &str) -> Option<Result<u32, ()>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u32>()
            .ok()
            .filter(|id| *id <= i32::MAX as u32)
            .ok_or(()),
    )
}

/// Resolves `user` (`None` means root) against passwd and group text.
///
/// A numeric user or group not in the files is used as is; a name not in the files is an
/// error. The supplementary groups are the primary group, then `/etc/group` memberships only
/// when no group was given (moby: "supplementary group ids only make sense if in the implicit
/// form").
pub fn resolve(user: Option<&str>, passwd: &str, group: &str) -> Result<ExecUser, ContainerError> {
    let spec = user.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user_part, group_part)) => (user_part, Some(group_part)),
        None => (spec, None),
    };
    let invalid = || ContainerError::InvalidUser {
        user: spec.to_string(),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let numeric_user = parse_id(user_part).transpose().map_err(|()| invalid())?;

    let entry = passwd_entries(passwd)
        .find(|entry| entry.name == user_part || Some(entry.uid) == numeric_user);
    let (uid, mut gid, home, name) = match (&entry, numeric_user) {
        (Some(entry), _) => (
            entry.uid,
            entry.gid,
            entry.home.to_string(),
            Some(entry.name),
        ),
        (None, Some(uid)) => (uid, 0, "/".to_string(), None),
        (None, None) => {
            return Err(ContainerError::UnknownUser {
                user: user_part.to_string(),
            });
        }
    };

    let mut groups = Vec::new();
    match group_part.filter(|group_part| !group_part.is_empty()) {
        Some(group_part) => {
            let numeric_group = parse_id(group_part).transpose().map_err(|()| invalid())?;
            let entry = group_entries(group)
                .find(|entry| entry.name == group_part || Some(entry.gid) == numeric_group);
            gid = match (entry, numeric_group) {
                (Some(entry), _) => entry.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(ContainerError::UnknownGroup {
                        group: group_part.to_string(),
                    });
                }
            };
        }
        None => {
            if let Some(name) = name {
                for entry in group_entries(group) {
                    if entry.members.contains(&name)
                        && entry.gid != gid
                        && !groups.contains(&entry.gid)
                    {
                        groups.push(entry.gid);
                    }
                }
            }
        }
    }
    groups.insert(0, gid);
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root\napp:x:1000:\nextra:x:2000:app,other\n\
        nogroup:x:65534:\n";

    fn user(spec: Option<&str>) -> Result<ExecUser, ContainerError> {
        resolve(spec, PASSWD, GROUP)
    }

    #[test]
    fn no_user_is_root_with_its_supplementary_groups() {
        assert_eq!(
            user(None).unwrap(),
            ExecUser {
                uid: 0,
                gid: 0,
                groups: vec![0, 10],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn name_takes_primary_group_home_and_memberships_from_the_files() {
        assert_eq!(
            user(Some("app")).unwrap(),
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 2000],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn numeric_uid_in_passwd_is_the_same_user() {
        assert_eq!(user(Some("1000")).unwrap(), user(Some("app")).unwrap());
    }

    #[test]
    fn explicit_group_replaces_primary_and_drops_supplementary_groups() {
        let resolved = user(Some("1000:2000")).unwrap();
        assert_eq!((resolved.uid, resolved.gid), (1000, 2000));
        assert_eq!(resolved.groups, [2000]);
        assert_eq!(user(Some("app:extra")).unwrap().gid, 2000);
    }

    #[test]
    fn unknown_numeric_ids_are_used_as_is_with_home_slash() {
        assert_eq!(
            user(Some("4242:4343")).unwrap(),
            ExecUser {
                uid: 4242,
                gid: 4343,
                groups: vec![4343],
                home: "/".into()
            }
        );
        assert_eq!(user(Some("4242")).unwrap().gid, 0);
    }

    #[test]
    fn unknown_names_are_errors_with_docker_wording() {
        let error = user(Some("ghost")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        let error = user(Some("app:ghosts")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unable to find group ghosts: no matching entries in group file"
        );
    }

    #[test]
    fn ids_above_i32_max_are_rejected() {
        assert!(matches!(
            user(Some("4294967295")),
            Err(ContainerError::InvalidUser { .. })
        ));
    }

    #[test]
    fn missing_files_still_allow_numeric_ids() {
        assert_eq!(resolve(Some("7:8"), "", "").unwrap().uid, 7);
        assert!(resolve(Some("app"), "", "").is_err());
    }
}
