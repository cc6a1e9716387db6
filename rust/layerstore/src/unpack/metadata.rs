//! Ownership, modes, timestamps and extended attributes of extracted entries.
//!
//! Each is kept as far as the running user may set it. What cannot be kept is counted in
//! [`Degradations`] and reported once per unpack, not once per file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use rustix::fs::{AtFlags, Gid, Timespec, Timestamps, Uid, XattrFlags, CWD};

/// Metadata of one entry, read from its tar header and PAX records.
#[derive(Clone, Debug)]
pub struct Metadata {
    pub uid: u64,
    pub gid: u64,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub mtime_seconds: i64,
    pub mtime_nanoseconds: u32,
    /// Extended attributes from `SCHILY.xattr.<name>` PAX records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Metadata {
    /// Reads the metadata of an entry; a PAX `mtime` with a fraction gives nanoseconds.
    pub fn of_entry<R: io::Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Metadata> {
        let header = entry.header();
        let mut metadata = Metadata {
            uid: header.uid()?,
            gid: header.gid()?,
            mode: header.mode()? & 0o7777,
            mtime_seconds: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
            mtime_nanoseconds: 0,
            xattrs: Vec::new(),
        };
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                let Ok(key) = extension.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    metadata
                        .xattrs
                        .push((name.to_owned(), extension.value_bytes().to_owned()));
                } else if key == "mtime" {
                    if let Some((seconds, nanoseconds)) =
                        extension.value().ok().and_then(parse_pax_time)
                    {
                        metadata.mtime_seconds = seconds;
                        metadata.mtime_nanoseconds = nanoseconds;
                    }
                }
            }
        }
        Ok(metadata)
    }
}

/// Parses a PAX time such as `1700000000.123456789` (a leading `-` allowed).
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = whole.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanoseconds = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some((seconds, nanoseconds))
}

/// What the running user may set.
#[derive(Clone, Copy, Debug)]
pub struct Privileges {
    pub uid: u32,
    pub gid: u32,
}

impl Privileges {
    pub fn current() -> Privileges {
        Privileges {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    /// True when running as root, which may set any owner and create device nodes.
    // NOTE: a non-root user with CAP_CHOWN or CAP_MKNOD is treated as unprivileged.
    pub fn is_root(self) -> bool {
        self.uid == 0
    }
}

/// Metadata that could not be kept, counted across every layer of one unpack.
#[derive(Debug, Default)]
pub struct Degradations {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Degradations {
    /// Counts one entry whose `what` (a fixed description of the loss and its cause) was lost.
    pub fn record(&self, what: String) {
        *self
            .counts
            .lock()
            .expect("not poisoned")
            .entry(what)
            .or_default() += 1;
    }

    /// One line per kind of loss, with the number of entries it affected.
    pub fn summary(&self) -> Vec<String> {
        self.counts
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(what, count)| format!("{what} ({count} entries)"))
            .collect()
    }
}

/// Which metadata an entry kind takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Symlink,
    Other,
}

/// The owner of an entry before its metadata is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Created by this process in a directory without the setgid bit (directory modes are set
    /// after extraction), so owned by its effective uid and gid: a matching owner needs no call.
    Created,
    /// Found on disk (a directory of a lower layer, say): the owner is always set.
    Unknown,
}

/// Applies owner, mode, extended attributes and modification time to `path`, in that order
/// (a change of owner clears `security.capability` and setuid bits, so it goes first).
/// Symlinks get no mode. Failures the user cannot avoid are recorded in `degradations`; other
/// failures are returned.
pub fn apply(
    path: &Path,
    metadata: &Metadata,
    kind: Kind,
    owner: Owner,
    privileges: Privileges,
    degradations: &Degradations,
) -> io::Result<()> {
    if let Some((uid, gid)) = owner_change(metadata, owner, privileges, degradations) {
        rustix::fs::chownat(CWD, path, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    if kind == Kind::Other {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(metadata.mode))?;
    }
    for (name, value) in &metadata.xattrs {
        let set = rustix::fs::lsetxattr(path, name.as_str(), value, XattrFlags::empty());
        if let Err(error) = set {
            record_xattr_loss(name, error, degradations);
        }
    }
    rustix::fs::utimensat(CWD, path, &timestamps(metadata), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// [`apply`] for a regular file this process just created and still has open: the calls go
/// through the descriptor, which saves a path lookup each.
pub fn apply_to_file(
    file: &File,
    metadata: &Metadata,
    privileges: Privileges,
    degradations: &Degradations,
) -> io::Result<()> {
    if let Some((uid, gid)) = owner_change(metadata, Owner::Created, privileges, degradations) {
        rustix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(metadata.mode))?;
    for (name, value) in &metadata.xattrs {
        let set = rustix::fs::fsetxattr(file, name.as_str(), value, XattrFlags::empty());
        if let Err(error) = set {
            record_xattr_loss(name, error, degradations);
        }
    }
    rustix::fs::futimens(file, &timestamps(metadata))?;
    Ok(())
}

fn timestamps(metadata: &Metadata) -> Timestamps {
    let time = Timespec {
        tv_sec: metadata.mtime_seconds,
        tv_nsec: metadata.mtime_nanoseconds.into(),
    };
    Timestamps {
        last_access: time,
        last_modification: time,
    }
}

fn record_xattr_loss(name: &str, error: rustix::io::Errno, degradations: &Degradations) {
    let namespace = name.split('.').next().unwrap_or(name);
    degradations.record(format!(
        "extended attributes in namespace {namespace:?} not kept: {}",
        io::Error::from(error)
    ));
}

/// Returns the owner to set, or `None` when there is nothing to set or the user may not set it
/// (then the loss is recorded).
fn owner_change(
    metadata: &Metadata,
    owner: Owner,
    privileges: Privileges,
    degradations: &Degradations,
) -> Option<(Uid, Gid)> {
    let (Ok(uid), Ok(gid)) = (u32::try_from(metadata.uid), u32::try_from(metadata.gid)) else {
        degradations.record("owners above 2^32 - 1 not kept".into());
        return None;
    };
    let matches = uid == privileges.uid && gid == privileges.gid;
    if !privileges.is_root() {
        if !matches {
            degradations.record(format!(
                "owners not kept: not running as root (uid {})",
                privileges.uid
            ));
        }
        return None;
    }
    if matches && owner == Owner::Created {
        return None;
    }
    Some((Uid::from_raw(uid), Gid::from_raw(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_fractions() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
