//! Entry paths: checked so that no write lands outside the target root.
//!
//! An entry name is split into plain components; an absolute name or a `..` component is
//! rejected. Parent directories are then resolved on disk one component at a time with `lstat`.
//! A symlink met on the way is followed inside the root (an absolute target starts again at the
//! root, as it would once the root is mounted as `/`), and a target whose `..` climbs above the
//! root is rejected. The final component is never followed: callers replace whatever is there.
//!
//! This holds while nobody else changes the directory during extraction; unpack works in
//! staging directories that only it writes to.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path before giving up, as Linux does (`ELOOP`).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Why a path was rejected or could not be resolved.
#[derive(Debug)]
pub enum PathProblem {
    /// The path would lead outside the root; the text says how.
    Unsafe(String),
    /// The path cannot be created (a parent is a file, say); the text says why.
    Invalid(String, Option<io::Error>),
}

/// Splits a tar entry name into plain components. `./` prefixes and `.` components are dropped,
/// so the root itself is an empty list.
pub fn entry_components(name: &[u8]) -> Result<Vec<OsString>, PathProblem> {
    if name.is_empty() {
        return Err(PathProblem::Unsafe("the entry name is empty".into()));
    }
    if name.contains(&0) {
        return Err(PathProblem::Unsafe(
            "the entry name contains a NUL byte".into(),
        ));
    }
    let path = Path::new(OsStr::from_bytes(name));
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => components.push(part.to_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathProblem::Unsafe(
                    "the entry name is an absolute path".into(),
                ));
            }
            Component::ParentDir => {
                return Err(PathProblem::Unsafe(
                    "the entry name has a `..` component".into(),
                ));
            }
        }
    }
    Ok(components)
}

/// True when a symlink at `link` (components below the root) with `target` would point above
/// the root. Absolute targets are rooted at the root, so they never escape.
pub fn symlink_escapes(link: &[OsString], target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.len().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(parent) => depth = parent,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    false
}

/// Resolves the directory `components` inside `root`, following symlinks inside the root, and
/// returns its path on disk, which contains no symlinks below `root`. Missing directories are
/// created with mode 0755 when `create` is set, and each one created is passed to `created`.
pub fn resolve_directory(
    root: &Path,
    components: &[OsString],
    create: bool,
    created: &mut dyn FnMut(&[OsString]),
) -> Result<PathBuf, PathProblem> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = components.iter().rev().cloned().collect();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        if component == ".." {
            if resolved.pop().is_none() {
                return Err(PathProblem::Unsafe(
                    "a symlink on the way leads above the root".into(),
                ));
            }
            continue;
        }
        if component.is_empty() || component == "." {
            continue;
        }
        let candidate = join(root, &resolved).join(&component);
        match std::fs::symlink_metadata(&candidate) {
            Ok(metadata) if metadata.is_dir() => resolved.push(component),
            Ok(metadata) if metadata.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(PathProblem::Unsafe(format!(
                        "more than {MAX_SYMLINK_HOPS} symlinks on the way"
                    )));
                }
                let target = std::fs::read_link(&candidate).map_err(|error| {
                    PathProblem::Invalid(
                        format!("reading symlink {}", candidate.display()),
                        Some(error),
                    )
                })?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for part in target.components().rev() {
                    match part {
                        Component::Normal(name) => pending.push(name.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(_) => {
                return Err(PathProblem::Invalid(
                    format!("{} is not a directory", display(&resolved, &component)),
                    None,
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound && create => {
                crate::unpack::extract::create_directory(&candidate).map_err(|error| {
                    PathProblem::Invalid(format!("creating {}", candidate.display()), Some(error))
                })?;
                resolved.push(component);
                created(&resolved);
            }
            Err(error) => {
                return Err(PathProblem::Invalid(
                    format!("{} cannot be resolved", display(&resolved, &component)),
                    Some(error),
                ));
            }
        }
    }
    Ok(join(root, &resolved))
}

fn join(root: &Path, components: &[OsString]) -> PathBuf {
    let mut path = root.to_owned();
    path.extend(components);
    path
}

fn display(resolved: &[OsString], last: &OsStr) -> String {
    let mut path = PathBuf::new();
    path.extend(resolved);
    path.push(last);
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(text: &str) -> Vec<OsString> {
        entry_components(text.as_bytes()).unwrap()
    }

    #[test]
    fn entry_names_reject_absolute_and_parent() {
        for name in ["/etc/passwd", "a/../../b", "..", "a/.."] {
            assert!(
                matches!(
                    entry_components(name.as_bytes()),
                    Err(PathProblem::Unsafe(_))
                ),
                "{name}"
            );
        }
        assert_eq!(components("./a//b/./c/"), ["a", "b", "c"]);
        assert!(components("./").is_empty());
    }

    #[test]
    fn relative_symlink_escape_is_lexical() {
        assert!(symlink_escapes(&components("link"), Path::new("../etc")));
        assert!(symlink_escapes(&components("a/link"), Path::new("../../x")));
        assert!(!symlink_escapes(&components("a/link"), Path::new("../x")));
        assert!(!symlink_escapes(
            &components("a/link"),
            Path::new("/etc/passwd")
        ));
        assert!(!symlink_escapes(
            &components("a/b/link"),
            Path::new("x/../../y")
        ));
    }
}
