//! Unpack of hand-built images: layouts, whiteouts, metadata, rejections and re-runs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use layerstore::unpack::{self, UnpackError, UnpackOptions};
use layerstore::{Algorithm, Digest, Expected, Store};
use tar::{EntryType, Header};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// One tar entry of a hand-built layer; names are written as given, unchecked.
enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn header(name: &str, kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    let bytes = name.as_bytes();
    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_600_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn set_link(header: &mut Header, target: &str) {
    let bytes = target.as_bytes();
    header.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
}

fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (mut header, data): (Header, &[u8]) = match entry {
            Entry::Dir(name, mode) => (header(name, EntryType::Directory, *mode, 0), b""),
            Entry::File(name, data, mode) => (
                header(name, EntryType::Regular, *mode, data.len() as u64),
                data,
            ),
            Entry::Symlink(name, target) => {
                let mut header = header(name, EntryType::Symlink, 0o777, 0);
                set_link(&mut header, target);
                (header, b"")
            }
            Entry::Hardlink(name, target) => {
                let mut header = header(name, EntryType::Link, 0o644, 0);
                set_link(&mut header, target);
                (header, b"")
            }
            Entry::Char(name) => {
                let mut header = header(name, EntryType::Char, 0o600, 0);
                header.set_device_major(1).unwrap();
                header.set_device_minor(3).unwrap();
                (header, b"")
            }
        };
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn compress(tar: &[u8], media_type: &str) -> Vec<u8> {
    match media_type {
        GZIP => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(tar).unwrap();
            encoder.finish().unwrap()
        }
        ZSTD => zstd::encode_all(tar, 3).unwrap(),
        _ => tar.to_vec(),
    }
}

/// Stores an image of `layers` (tar streams with their media types) and tags it `tag`.
fn put_image(store: &Store, tag: &str, layers: &[(Vec<u8>, &str)]) -> Digest {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, media_type) in layers {
        let blob = compress(tar, media_type);
        let put = store.put_bytes(&blob, Expected::default()).unwrap();
        descriptors.push(serde_json::json!({
            "mediaType": media_type, "digest": put.digest.to_string(), "size": blob.len(),
        }));
        diff_ids.push(Digest::of_bytes(Algorithm::Sha256, tar).to_string());
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_put = store.put_bytes(&config, Expected::default()).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_put.digest.to_string(), "size": config.len(),
        },
        "layers": descriptors,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = store
        .put_bytes(&manifest, Expected::default())
        .unwrap()
        .digest;
    store.tag(tag, &digest).unwrap();
    digest
}

fn flatten() -> UnpackOptions {
    UnpackOptions {
        flatten: true,
        ..UnpackOptions::default()
    }
}

fn overlay() -> UnpackOptions {
    UnpackOptions::default()
}

fn setup() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path().join("store")).unwrap();
    (directory, store)
}

fn base_layer() -> Vec<u8> {
    tar_of(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/hostname", b"base\n", 0o644),
        Entry::Dir("usr/", 0o755),
        Entry::Dir("usr/bin/", 0o555),
        Entry::File("usr/bin/tool", b"#!/bin/sh\n", 0o4755),
        Entry::Hardlink("usr/bin/tool-alias", "usr/bin/tool"),
        Entry::Symlink("bin", "usr/bin"),
        Entry::Symlink("etc/absolute", "/etc/hostname"),
        Entry::Dir("a/", 0o755),
        Entry::File("a/b", b"hidden later", 0o644),
        Entry::File("a/c", b"kept", 0o644),
        Entry::Dir("d/", 0o700),
        Entry::File("d/x", b"hidden by opaque", 0o644),
        Entry::Dir("d/sub/", 0o755),
        Entry::File("d/sub/old", b"hidden by opaque", 0o644),
    ])
}

fn upper_layer() -> Vec<u8> {
    tar_of(&[
        Entry::File("a/.wh.b", b"", 0o644),
        Entry::File("d/sub/new", b"from the upper layer", 0o644),
        Entry::File("d/.wh..wh..opq", b"", 0o644),
        Entry::File("d/y", b"from the upper layer", 0o644),
        Entry::File("etc/hostname", b"upper\n", 0o600),
    ])
}

#[test]
fn flatten_applies_whiteouts_and_keeps_metadata() {
    let (directory, store) = setup();
    put_image(
        &store,
        "img",
        &[(base_layer(), GZIP), (upper_layer(), ZSTD)],
    );
    let target = directory.path().join("out");
    let report = unpack::unpack(&store, "img", &target, &flatten()).unwrap();
    let root = target.join("rootfs");
    assert_eq!(report.result, root.canonicalize().unwrap());
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"upper\n");
    assert_eq!(fs::read(root.join("a/c")).unwrap(), b"kept");
    assert!(!root.join("a/b").exists());
    assert!(!root.join("a/.wh.b").exists());
    assert!(!root.join("d/x").exists());
    assert!(!root.join("d/sub/old").exists());
    assert!(!root.join("d/.wh..wh..opq").exists());
    assert_eq!(fs::read(root.join("d/y")).unwrap(), b"from the upper layer");
    assert_eq!(
        fs::read(root.join("d/sub/new")).unwrap(),
        b"from the upper layer"
    );
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(root.join("etc/absolute")).unwrap(),
        Path::new("/etc/hostname")
    );
    let tool = fs::metadata(root.join("usr/bin/tool")).unwrap();
    let alias = fs::metadata(root.join("usr/bin/tool-alias")).unwrap();
    assert_eq!(tool.ino(), alias.ino());
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), 1_600_000_000);
    let bin = fs::metadata(root.join("usr/bin")).unwrap();
    assert_eq!(bin.permissions().mode() & 0o7777, 0o555);
    assert_eq!(bin.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(root.join("d")).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(target.join("image.json").is_file());
    assert!(!target.join("lowerdir").exists());
}

#[test]
fn overlay_keeps_whiteouts_for_overlayfs() {
    let (directory, store) = setup();
    let upper = upper_layer();
    let upper_diff_id = Digest::of_bytes(Algorithm::Sha256, &upper);
    put_image(&store, "img", &[(base_layer(), GZIP), (upper, TAR)]);
    let target = directory.path().join("out");
    let report = unpack::unpack(&store, "img", &target, &overlay()).unwrap();
    assert_eq!(report.layers.len(), 2);
    let layer = target.join("layers").join(upper_diff_id.hex());
    let whiteout = fs::symlink_metadata(layer.join("a/b")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!layer.join("a/.wh.b").exists());
    assert!(!layer.join("d/.wh..wh..opq").exists());
    let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| xattr_value(&layer.join("d"), name).as_deref() == Some(b"y".as_slice()));
    assert!(opaque, "d is not marked opaque");
    let lowerdir = fs::read_to_string(target.join("lowerdir")).unwrap();
    let paths: Vec<&str> = lowerdir.trim_end().split(':').collect();
    assert_eq!(paths.len(), 2);
    assert_eq!(Path::new(paths[0]), layer.canonicalize().unwrap());
}

fn xattr_value(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut value = vec![0u8; 16];
    let size = rustix::fs::lgetxattr(path, name, &mut value).ok()?;
    value.truncate(size);
    Some(value)
}

#[test]
fn hostile_entries_are_rejected_by_name() {
    let cases: Vec<(&str, Vec<Entry<'_>>, &str, &str)> = vec![
        (
            "absolute path",
            vec![Entry::File("/etc/evil", b"x", 0o644)],
            "/etc/evil",
            "absolute",
        ),
        (
            "parent component",
            vec![Entry::File("a/../../evil", b"x", 0o644)],
            "a/../../evil",
            "`..`",
        ),
        (
            "escaping symlink then write",
            vec![
                Entry::Symlink("escape", "../../../../tmp"),
                Entry::File("escape/evil", b"x", 0o644),
            ],
            "escape",
            "leads outside the root",
        ),
        (
            "hardlink with parent component",
            vec![Entry::Hardlink("link", "../../etc/passwd")],
            "link",
            "`..`",
        ),
        (
            "absolute hardlink",
            vec![Entry::Hardlink("link", "/etc/passwd")],
            "link",
            "absolute",
        ),
        (
            "whiteout of parent",
            vec![Entry::File("a/.wh...", b"", 0o644)],
            "a/.wh...",
            "whiteout",
        ),
    ];
    for (id, entries, entry, reason) in cases {
        for options in [flatten(), overlay()] {
            let (directory, store) = setup();
            put_image(&store, "img", &[(tar_of(&entries), GZIP)]);
            let target = directory.path().join("out");
            let error = unpack::unpack(&store, "img", &target, &options).unwrap_err();
            let UnpackError::UnsafeEntry {
                entry: rejected,
                reason: why,
                ..
            } = &error
            else {
                panic!("{id}: expected UnsafeEntry, got {error}");
            };
            assert_eq!(rejected, entry, "{id}");
            assert!(why.contains(reason), "{id}: {why}");
            assert!(!target.join("rootfs").exists(), "{id}");
            assert!(!target.join("lowerdir").exists(), "{id}");
        }
    }
}

#[test]
fn write_through_absolute_symlink_stays_inside() {
    let (directory, store) = setup();
    let lower = tar_of(&[Entry::Symlink("hostetc", "/etc")]);
    let upper = tar_of(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("hostetc/warmstart-test", b"inside", 0o644),
    ]);
    put_image(&store, "img", &[(lower, GZIP), (upper, GZIP)]);
    let target = directory.path().join("out");
    unpack::unpack(&store, "img", &target, &flatten()).unwrap();
    assert_eq!(
        fs::read(target.join("rootfs/etc/warmstart-test")).unwrap(),
        b"inside"
    );
    assert!(!Path::new("/etc/warmstart-test").exists());
}

/// A directory that earlier entries wrote into is replaced by a symlink to an absolute host
/// path: later entries below it must go through the symlink resolved inside the root, not to
/// the directory's old place (which is now the symlink, and would lead out of the root).
#[test]
fn directory_replaced_by_symlink_stays_inside() {
    let (directory, store) = setup();
    let outside = directory.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_name = outside.to_str().unwrap().to_owned();
    let layer = tar_of(&[
        Entry::Dir("d/", 0o755),
        Entry::File("d/first", b"in the directory", 0o644),
        Entry::Symlink("d", &outside_name),
        Entry::File("d/second", b"through the symlink", 0o644),
    ]);
    put_image(&store, "img", &[(layer, GZIP)]);
    for (layout, options) in [("rootfs", flatten()), ("overlay", overlay())] {
        let target = directory.path().join(format!("out-{layout}"));
        let report = unpack::unpack(&store, "img", &target, &options).unwrap();
        let root = match layout {
            "rootfs" => target.join("rootfs"),
            _ => target.join("layers").join(report.layers[0].diff_id.hex()),
        };
        let link = fs::symlink_metadata(root.join("d")).unwrap();
        assert!(link.file_type().is_symlink(), "{layout}");
        let inside = root
            .join(outside_name.trim_start_matches('/'))
            .join("second");
        assert_eq!(
            fs::read(&inside).unwrap(),
            b"through the symlink",
            "{layout}"
        );
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "{layout}: an entry was written outside the root"
        );
    }
}

/// Entries created inside a setgid directory take that directory's group. Unpack skips the
/// `chown` of an entry whose owner is already the process's, so the staging directories it
/// creates in a setgid target must not inherit the bit. Checked only as root, which keeps
/// owners.
#[test]
fn setgid_target_keeps_entry_groups() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let (directory, store) = setup();
    let layer = tar_of(&[
        Entry::Dir("d/", 0o755),
        Entry::File("d/file", b"owned by 0:0", 0o644),
    ]);
    put_image(&store, "img", &[(layer, GZIP)]);
    for (layout, options) in [("rootfs", flatten()), ("overlay", overlay())] {
        let target = directory.path().join(format!("out-{layout}"));
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::chown(&target, None, Some(4321)).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o2755)).unwrap();
        let report = unpack::unpack(&store, "img", &target, &options).unwrap();
        let root = match layout {
            "rootfs" => target.join("rootfs"),
            _ => target.join("layers").join(report.layers[0].diff_id.hex()),
        };
        for path in [root.join("d"), root.join("d/file")] {
            let gid = fs::symlink_metadata(&path).unwrap().gid();
            assert_eq!(gid, 0, "{layout}: {}", path.display());
        }
    }
}

#[test]
fn hardlink_through_symlink_stays_inside() {
    let (directory, store) = setup();
    let layer = tar_of(&[
        Entry::Symlink("hostetc", "/etc"),
        Entry::Hardlink("passwd", "hostetc/passwd"),
    ]);
    put_image(&store, "img", &[(layer, GZIP)]);
    let target = directory.path().join("out");
    let error = unpack::unpack(&store, "img", &target, &flatten()).unwrap_err();
    assert!(matches!(error, UnpackError::InvalidLayer { .. }), "{error}");
    assert!(error.to_string().contains("passwd"), "{error}");
}

#[test]
fn device_nodes_are_created_as_root() {
    if rustix::process::geteuid().as_raw() != 0 {
        return;
    }
    let (directory, store) = setup();
    put_image(&store, "img", &[(tar_of(&[Entry::Char("null")]), GZIP)]);
    let target = directory.path().join("out");
    unpack::unpack(&store, "img", &target, &flatten()).unwrap();
    let node = fs::symlink_metadata(target.join("rootfs/null")).unwrap();
    assert!(node.file_type().is_char_device());
    assert_eq!(node.rdev(), rustix::fs::makedev(1, 3));
}

#[test]
fn diff_id_mismatch_publishes_nothing() {
    let (directory, store) = setup();
    let layer = tar_of(&[Entry::File("f", b"x", 0o644)]);
    let blob = compress(&layer, GZIP);
    let put = store.put_bytes(&blob, Expected::default()).unwrap();
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"not the layer");
    let config = serde_json::to_vec(
        &serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [wrong.to_string()]}}),
    )
    .unwrap();
    let config_digest = store
        .put_bytes(&config, Expected::default())
        .unwrap()
        .digest;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": GZIP, "digest": put.digest.to_string(), "size": blob.len()}],
    })).unwrap();
    let digest = store
        .put_bytes(&manifest, Expected::default())
        .unwrap()
        .digest;
    for options in [flatten(), overlay()] {
        let target = directory.path().join(format!("out-{}", options.flatten));
        let error = unpack::unpack(&store, &digest.to_string(), &target, &options).unwrap_err();
        assert!(
            matches!(error, UnpackError::DiffIdMismatch { .. }),
            "{error}"
        );
        assert!(!target.join("rootfs").exists());
        assert!(!target.join("lowerdir").exists());
        assert_eq!(fs::read_dir(target.join("layers")).unwrap().count(), 0);
    }
}

/// Unpack does not hash the blob again, so a blob that changed on disk after the store checked
/// it must still be caught: by the gzip or zstd checksum, or else by the diff_id.
#[test]
fn blob_changed_in_store_publishes_nothing() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let layer = tar_of(&[Entry::File("data", &data, 0o644)]);
    for media_type in [GZIP, ZSTD, TAR] {
        let (directory, store) = setup();
        put_image(&store, "img", &[(layer.clone(), media_type)]);
        let blob = compress(&layer, media_type);
        let path = store.blob_path(&Digest::of_bytes(Algorithm::Sha256, &blob));
        let mut changed = blob.clone();
        // Past the tar header and the compression header, inside the file data.
        let middle = changed.len() / 2;
        changed[middle] ^= 0x55;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, &changed).unwrap();
        for options in [flatten(), overlay()] {
            let target = directory.path().join(format!("out-{}", options.flatten));
            let error = unpack::unpack(&store, "img", &target, &options).unwrap_err();
            assert!(
                matches!(
                    error,
                    UnpackError::DiffIdMismatch { .. } | UnpackError::InvalidLayer { .. }
                ),
                "{media_type}: {error}"
            );
            assert!(!target.join("rootfs").exists(), "{media_type}");
            assert!(!target.join("lowerdir").exists(), "{media_type}");
            let layers = fs::read_dir(target.join("layers")).unwrap().count();
            assert_eq!(layers, 0, "{media_type}");
        }
    }
}

#[test]
fn compression_mismatch_names_both() {
    let (directory, store) = setup();
    let layer = tar_of(&[Entry::File("f", b"x", 0o644)]);
    let blob = compress(&layer, ZSTD);
    let put = store.put_bytes(&blob, Expected::default()).unwrap();
    let diff_id = Digest::of_bytes(Algorithm::Sha256, &layer);
    let config = serde_json::to_vec(
        &serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}}),
    )
    .unwrap();
    let config_digest = store
        .put_bytes(&config, Expected::default())
        .unwrap()
        .digest;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": GZIP, "digest": put.digest.to_string(), "size": blob.len()}],
    })).unwrap();
    let digest = store
        .put_bytes(&manifest, Expected::default())
        .unwrap()
        .digest;
    let error = unpack::unpack(
        &store,
        &digest.to_string(),
        &directory.path().join("out"),
        &flatten(),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            error,
            UnpackError::CompressionMismatch {
                detected: "zstd",
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains(GZIP), "{message}");
}

#[test]
fn rerun_removes_partials_and_reuses_layers() {
    let (directory, store) = setup();
    put_image(
        &store,
        "img",
        &[(base_layer(), GZIP), (upper_layer(), GZIP)],
    );
    let target = directory.path().join("out");
    fs::create_dir_all(target.join("layers/.partial-junk/deep")).unwrap();
    fs::create_dir_all(target.join(".partial-rootfs/etc")).unwrap();
    let first = unpack::unpack(&store, "img", &target, &overlay()).unwrap();
    assert!(first.layers.iter().all(|layer| !layer.reused));
    assert!(!target.join("layers/.partial-junk").exists());
    assert!(!target.join(".partial-rootfs").exists());
    fs::remove_file(target.join("lowerdir")).unwrap();
    let second = unpack::unpack(&store, "img", &target, &overlay()).unwrap();
    assert!(second.layers.iter().all(|layer| layer.reused));
    assert!(target.join("lowerdir").is_file());
    let flattened = unpack::unpack(&store, "img", &target, &flatten()).unwrap();
    assert!(flattened.layers.iter().all(|layer| !layer.reused));
    assert!(target.join("rootfs/a/c").is_file());
}

#[test]
fn target_of_another_image_is_rejected() {
    let (directory, store) = setup();
    put_image(&store, "one", &[(base_layer(), GZIP)]);
    put_image(&store, "two", &[(upper_layer(), GZIP)]);
    let target = directory.path().join("out");
    unpack::unpack(&store, "one", &target, &overlay()).unwrap();
    let error = unpack::unpack(&store, "two", &target, &overlay()).unwrap_err();
    assert!(matches!(error, UnpackError::TargetInUse { .. }), "{error}");
    let foreign = directory.path().join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let error = unpack::unpack(&store, "one", &foreign, &overlay()).unwrap_err();
    assert!(error.to_string().contains("notes.txt"), "{error}");
}
