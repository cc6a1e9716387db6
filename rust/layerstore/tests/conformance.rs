//! Conformance suite for the store: the behaviour every caller relies on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use layerstore::store::{GcOptions, IngestStart, Problem};
use layerstore::{Algorithm, Digest, Expected, Store, StoreError};

fn new_store() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path().join("store")).unwrap();
    (directory, store)
}

/// Deterministic, incompressible-looking content of `size` bytes.
fn content(size: usize, seed: u8) -> Vec<u8> {
    let mut state = u64::from(seed) + 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> Digest {
    Digest::of_bytes(Algorithm::Sha256, data)
}

fn ingest_is_clean(store: &Store) -> bool {
    fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .all(|entry| {
            !entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".data")
        })
}

#[test]
fn put_then_read_returns_same_bytes() {
    let (_dir, store) = new_store();
    let data = content(3 << 20, 1);
    let outcome = store.put_bytes(&data, Expected::default()).unwrap();
    assert!(outcome.created);
    assert_eq!(outcome.digest, sha256(&data));
    assert_eq!(outcome.size, data.len() as u64);
    assert_eq!(store.read_range(&outcome.digest, 0, None).unwrap(), data);
    assert_eq!(fs::read(store.blob_path(&outcome.digest)).unwrap(), data);
}

#[test]
fn put_existing_blob_is_not_rewritten() {
    let (_dir, store) = new_store();
    let data = content(1000, 2);
    let digest = sha256(&data);
    assert!(
        store
            .put_bytes(&data, Expected::digest(digest.clone()))
            .unwrap()
            .created
    );
    let before = fs::metadata(store.blob_path(&digest)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let again = store
        .put_bytes(&data, Expected::digest(digest.clone()))
        .unwrap();
    assert!(!again.created);
    let after = fs::metadata(store.blob_path(&digest)).unwrap();
    assert_eq!(after.ino(), before.ino(), "the blob was rewritten");
    // Its time is refreshed so gc's grace period protects it for the caller.
    assert!(after.modified().unwrap() > before.modified().unwrap());
}

#[test]
fn put_empty_and_tiny_blobs() {
    let (_dir, store) = new_store();
    for data in [&b""[..], b"a", b"ab"] {
        let outcome = store
            .put_bytes(
                data,
                Expected::digest(sha256(data)).with_size(data.len() as u64),
            )
            .unwrap();
        assert_eq!(store.read_range(&outcome.digest, 0, None).unwrap(), data);
    }
    assert_eq!(store.list().unwrap().len(), 3);
}

#[test]
fn put_wrong_digest_leaves_no_blob() {
    let (_dir, store) = new_store();
    let data = content(5000, 3);
    let claimed = sha256(b"something else");
    let error = store
        .put_bytes(&data, Expected::digest(claimed.clone()))
        .unwrap_err();
    match error {
        StoreError::DigestMismatch {
            expected,
            actual,
            bytes,
        } => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, sha256(&data));
            assert_eq!(bytes, 5000);
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!store.has(&claimed));
    assert!(!store.has(&sha256(&data)));
    assert!(ingest_is_clean(&store));
}

#[test]
fn put_wrong_size_leaves_no_blob() {
    let (_dir, store) = new_store();
    let data = content(5000, 4);
    for declared in [4999, 5001] {
        let expected = Expected::digest(sha256(&data)).with_size(declared);
        let error = store.put_bytes(&data, expected).unwrap_err();
        assert!(
            matches!(error, StoreError::SizeMismatch { expected, .. } if expected == declared),
            "{error}"
        );
        assert!(!store.has(&sha256(&data)));
    }
    assert!(ingest_is_clean(&store));
}

#[test]
fn put_size_mismatch_with_existing_blob_is_reported() {
    let (_dir, store) = new_store();
    let data = content(100, 5);
    store.put_bytes(&data, Expected::default()).unwrap();
    let error = store
        .put_bytes(&data, Expected::digest(sha256(&data)).with_size(99))
        .unwrap_err();
    assert!(matches!(error, StoreError::SizeMismatch { .. }));
}

#[test]
fn sha512_blobs_are_stored_under_their_algorithm() {
    let (_dir, store) = new_store();
    let data = content(777, 6);
    let digest = Digest::of_bytes(Algorithm::Sha512, &data);
    let outcome = store
        .put_bytes(&data, Expected::digest(digest.clone()))
        .unwrap();
    assert_eq!(outcome.digest, digest);
    assert!(store
        .blob_path(&digest)
        .starts_with(store.root().join("blobs/sha512")));
    assert!(store.verify(false).unwrap().is_ok());
}

#[test]
fn ingest_resumes_partial_write() {
    let (_dir, store) = new_store();
    let data = content(2 << 20, 7);
    let expected = Expected::digest(sha256(&data)).with_size(data.len() as u64);
    let IngestStart::Open(mut first) = store.ingest(expected.clone(), Algorithm::Sha256).unwrap()
    else {
        panic!("blob should not exist yet");
    };
    first.write_all(&data[..1_000_000]).unwrap();
    drop(first); // as if the writer died: the keyed partial stays in ingest/

    let IngestStart::Open(mut second) = store.ingest(expected, Algorithm::Sha256).unwrap() else {
        panic!("blob should not exist yet");
    };
    assert_eq!(second.offset(), 1_000_000);
    second.write_all(&data[1_000_000..]).unwrap();
    let outcome = second.commit().unwrap();
    assert_eq!(outcome.digest, sha256(&data));
    assert_eq!(store.read_range(&outcome.digest, 0, None).unwrap(), data);
    assert!(ingest_is_clean(&store));
}

#[test]
fn ingest_of_committed_blob_reports_exists() {
    let (_dir, store) = new_store();
    let data = content(10, 8);
    store.put_bytes(&data, Expected::default()).unwrap();
    let start = store
        .ingest(Expected::digest(sha256(&data)), Algorithm::Sha256)
        .unwrap();
    assert!(matches!(start, IngestStart::Exists(outcome) if !outcome.created));
}

#[test]
fn concurrent_puts_of_one_blob_write_it_once() {
    let (_dir, store) = new_store();
    let data = Arc::new(content(8 << 20, 9));
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, data, barrier) = (store.clone(), Arc::clone(&data), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                store
                    .put_bytes(&data, Expected::digest(sha256(&data)))
                    .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| o.created).count(), 1);
    assert!(outcomes.iter().all(|o| o.digest == sha256(&data)));
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.verify(false).unwrap().is_ok());
}

#[test]
fn puts_of_different_blobs_do_not_wait_for_each_other() {
    let (_dir, store) = new_store();
    let held = content(10, 10);
    let IngestStart::Open(_writer) = store
        .ingest(Expected::digest(sha256(&held)), Algorithm::Sha256)
        .unwrap()
    else {
        panic!("blob should not exist yet");
    };
    // `_writer` holds the lock of `held`; a put of another digest must still finish.
    let other = content(10, 11);
    let (sender, receiver) = std::sync::mpsc::channel();
    let store_clone = store.clone();
    thread::spawn(move || {
        let result = store_clone.put_bytes(&other, Expected::digest(sha256(&other)));
        sender.send(result.is_ok()).unwrap();
    });
    assert_eq!(receiver.recv_timeout(Duration::from_secs(10)), Ok(true));
}

#[test]
fn second_writer_waits_for_first_and_reuses_its_blob() {
    let (_dir, store) = new_store();
    let data = content(1000, 12);
    let digest = sha256(&data);
    let IngestStart::Open(mut writer) = store
        .ingest(Expected::digest(digest.clone()), Algorithm::Sha256)
        .unwrap()
    else {
        panic!("blob should not exist yet");
    };
    let store_clone = store.clone();
    let waiting_digest = digest.clone();
    let waiter = thread::spawn(move || {
        let started = Instant::now();
        let outcome = store_clone
            .put_bytes(&[1, 2, 3], Expected::digest(waiting_digest))
            .unwrap();
        (outcome, started.elapsed())
    });
    thread::sleep(Duration::from_millis(200));
    writer.write_all(&data).unwrap();
    writer.commit().unwrap();
    let (outcome, waited) = waiter.join().unwrap();
    // The waiter's own bytes are wrong; it never wrote them because the blob was committed.
    assert!(!outcome.created);
    assert!(
        waited >= Duration::from_millis(150),
        "waited only {waited:?}"
    );
    assert_eq!(store.read_range(&digest, 0, None).unwrap(), data);
}

#[test]
fn read_range_returns_slice_and_rejects_out_of_bounds() {
    let (_dir, store) = new_store();
    let data = content(1000, 13);
    let digest = store.put_bytes(&data, Expected::default()).unwrap().digest;
    assert_eq!(
        store.read_range(&digest, 10, Some(20)).unwrap(),
        &data[10..30]
    );
    assert_eq!(store.read_range(&digest, 990, None).unwrap(), &data[990..]);
    assert_eq!(store.read_range(&digest, 1000, Some(0)).unwrap(), b"");
    let error = store.read_range(&digest, 990, Some(11)).unwrap_err();
    assert!(
        matches!(error, StoreError::RangeOutOfBounds { size: 1000, .. }),
        "{error}"
    );
    assert!(store.read_range(&digest, u64::MAX, Some(2)).is_err());
}

#[test]
fn missing_blob_lookups_fail_with_not_found() {
    let (_dir, store) = new_store();
    let digest = sha256(b"absent");
    assert!(!store.has(&digest));
    assert!(matches!(
        store.stat(&digest),
        Err(StoreError::BlobNotFound { .. })
    ));
    assert!(matches!(
        store.read_range(&digest, 0, None),
        Err(StoreError::BlobNotFound { .. })
    ));
    assert!(!store.delete(&digest, false).unwrap());
}

fn put_image(store: &Store, seed: u8) -> (Digest, Digest, Digest) {
    let layer = content(4096, seed);
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer_digest = store.put_bytes(&layer, Expected::default()).unwrap().digest;
    let config_digest = store
        .put_bytes(&config, Expected::default())
        .unwrap()
        .digest;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":4096}}]}}"#,
        config.len()
    );
    let manifest_digest = store
        .put_bytes(manifest.as_bytes(), Expected::default())
        .unwrap()
        .digest;
    (manifest_digest, config_digest, layer_digest)
}

#[test]
fn tag_resolve_and_untag() {
    let (_dir, store) = new_store();
    let (manifest, _, _) = put_image(&store, 20);
    let descriptor = store.tag("app:v1", &manifest).unwrap();
    assert_eq!(
        descriptor.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(store.resolve("app:v1").unwrap().digest, manifest);
    let (other, _, _) = put_image(&store, 21);
    store.tag("app:v1", &other).unwrap();
    assert_eq!(store.resolve("app:v1").unwrap().digest, other);
    assert_eq!(store.tags().unwrap().len(), 1);
    assert!(store.untag("app:v1").unwrap());
    assert!(matches!(
        store.resolve("app:v1"),
        Err(StoreError::TagNotFound { .. })
    ));
    assert!(matches!(
        store.tag("bad tag", &other),
        Err(StoreError::InvalidTag { .. })
    ));
    assert!(matches!(
        store.tag("x", &sha256(b"absent")),
        Err(StoreError::BlobNotFound { .. })
    ));
}

/// Stores an SBOM-style referrer whose `subject` is `subject`, and returns its digest.
fn put_referrer(store: &Store, subject: &Digest) -> Digest {
    let config = b"{}";
    let config_digest = store.put_bytes(config, Expected::default()).unwrap().digest;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "artifactType":"application/example.sbom",
            "config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{config_digest}","size":2}},
            "layers":[],
            "subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":500}}}}"#
    );
    store
        .put_bytes(manifest.as_bytes(), Expected::default())
        .unwrap()
        .digest
}

#[test]
fn referrer_without_subject_tags_verifies_and_exports() {
    let (dir, store) = new_store();
    let absent_subject = sha256(b"a manifest this store never received");
    let referrer = put_referrer(&store, &absent_subject);

    store.tag("sbom", &referrer).unwrap();

    assert!(store.verify(false).unwrap().is_ok());
    let layout = dir.path().join("layout");
    store.export_layout(&layout, None).unwrap();
    let copy = Store::open(dir.path().join("copy")).unwrap();
    copy.import_layout(&layout, None).unwrap();
    assert_eq!(copy.resolve("sbom").unwrap().digest, referrer);
    let options = GcOptions {
        grace_period: Duration::ZERO,
        ..GcOptions::default()
    };
    assert!(store.gc(&options).unwrap().removed_blobs.is_empty());
}

#[test]
fn referrer_subject_present_is_kept_by_gc() {
    let (_dir, store) = new_store();
    let (subject, config, layer) = put_image(&store, 40);
    let referrer = put_referrer(&store, &subject);
    store.tag("sbom", &referrer).unwrap();
    let options = GcOptions {
        grace_period: Duration::ZERO,
        ..GcOptions::default()
    };

    let report = store.gc(&options).unwrap();

    assert!(report.removed_blobs.is_empty());
    for digest in [&subject, &config, &layer] {
        assert!(store.has(digest));
    }
}

#[test]
fn gc_keeps_reachable_and_removes_the_rest() {
    let (_dir, store) = new_store();
    let (kept_manifest, kept_config, kept_layer) = put_image(&store, 30);
    let (dropped_manifest, dropped_config, dropped_layer) = put_image(&store, 31);
    store.tag("kept", &kept_manifest).unwrap();
    let options = GcOptions {
        grace_period: Duration::ZERO,
        ..GcOptions::default()
    };
    let report = store.gc(&options).unwrap();
    assert_eq!(report.removed_blobs.len(), 3);
    for digest in [&kept_manifest, &kept_config, &kept_layer] {
        assert!(store.has(digest));
    }
    for digest in [&dropped_manifest, &dropped_config, &dropped_layer] {
        assert!(!store.has(digest));
    }
}

#[test]
fn delete_refuses_blobs_of_tagged_images() {
    let (_dir, store) = new_store();
    let (manifest, _, layer) = put_image(&store, 35);
    store.tag("img", &manifest).unwrap();
    let error = store.delete(&layer, false).unwrap_err();
    assert!(
        matches!(error, StoreError::BlobInUse { ref referenced_by, .. } if *referenced_by == manifest.to_string()),
        "{error}"
    );
    assert!(store.has(&layer));
    assert!(store.delete(&layer, true).unwrap());
    assert!(!store.has(&layer));
}

#[test]
fn gc_grace_period_keeps_fresh_blobs() {
    let (_dir, store) = new_store();
    let (manifest, _, _) = put_image(&store, 32);
    let report = store.gc(&GcOptions::default()).unwrap();
    assert!(report.removed_blobs.is_empty());
    assert!(store.has(&manifest));
}

#[test]
fn gc_removes_stale_partial_files_only() {
    let (_dir, store) = new_store();
    let stale = store.root().join("ingest/tmp-1-2-3.data");
    fs::write(&stale, b"partial").unwrap();
    let options = GcOptions {
        grace_period: Duration::ZERO,
        ingest_max_age: Duration::ZERO,
        dry_run: false,
    };
    let data = content(10, 33);
    let IngestStart::Open(mut active) = store
        .ingest(Expected::digest(sha256(&data)), Algorithm::Sha256)
        .unwrap()
    else {
        panic!("blob should not exist yet");
    };
    active.write_all(&data[..5]).unwrap();
    let report = store.gc(&options).unwrap();
    assert_eq!(report.removed_ingest_files, vec![stale.clone()]);
    assert!(!stale.exists());
    // The locked partial survives and still commits.
    active.write_all(&data[5..]).unwrap();
    assert!(active.commit().unwrap().created);
}

#[test]
fn gc_dry_run_removes_nothing() {
    let (_dir, store) = new_store();
    let (manifest, _, _) = put_image(&store, 34);
    let options = GcOptions {
        grace_period: Duration::ZERO,
        dry_run: true,
        ..GcOptions::default()
    };
    assert_eq!(store.gc(&options).unwrap().removed_blobs.len(), 3);
    assert!(store.has(&manifest));
}

#[test]
fn verify_finds_corrupt_truncated_and_missing_blobs() {
    let (_dir, store) = new_store();
    let (manifest, config, layer) = put_image(&store, 40);
    store.tag("img", &manifest).unwrap();
    let (_, other_config, _) = put_image(&store, 41);
    assert!(store.verify(false).unwrap().is_ok());

    // Truncate the layer and replace the second image's config with other bytes.
    let layer_path = store.blob_path(&layer);
    let other_config_path = store.blob_path(&other_config);
    for path in [&layer_path, &other_config_path] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let full = fs::read(&layer_path).unwrap();
    fs::write(&layer_path, &full[..100]).unwrap();
    fs::write(&other_config_path, b"{}").unwrap();
    fs::remove_file(store.blob_path(&config)).unwrap();
    fs::write(store.root().join("blobs/sha256/not-a-digest"), b"x").unwrap();

    let report = store.verify(true).unwrap();
    let kinds: Vec<&str> = report
        .problems
        .iter()
        .map(|p| match p {
            Problem::DigestMismatch { .. } => "digest",
            Problem::Truncated {
                expected: 4096,
                actual: 100,
                ..
            } => "truncated",
            Problem::Truncated { .. } => "truncated with wrong sizes",
            Problem::SizeMismatch { .. } => "size",
            Problem::Missing { .. } => "missing",
            Problem::InvalidName { .. } => "name",
            Problem::InvalidManifest { .. } => "manifest",
        })
        .collect();
    assert!(kinds.contains(&"digest"), "{kinds:?}");
    assert!(kinds.contains(&"truncated"), "{kinds:?}");
    assert!(kinds.contains(&"missing"), "{kinds:?}");
    assert!(kinds.contains(&"name"), "{kinds:?}");
    assert_eq!(report.quarantined.len(), 3);
    assert!(!layer_path.exists());
    // After quarantine only the missing blobs remain to report.
    let again = store.verify(false).unwrap();
    assert!(
        again
            .problems
            .iter()
            .all(|p| matches!(p, Problem::Missing { .. })),
        "{:?}",
        again.problems
    );
}

#[test]
fn open_rejects_foreign_directories() {
    let directory = tempfile::tempdir().unwrap();
    fs::write(directory.path().join("notes.txt"), b"mine").unwrap();
    let error = Store::open(directory.path()).unwrap_err();
    assert!(matches!(error, StoreError::InvalidLayout { .. }), "{error}");
    fs::write(
        directory.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    assert!(Store::open(directory.path()).is_err());
}

#[test]
fn reopening_a_store_keeps_its_content() {
    let (dir, store) = new_store();
    let (manifest, _, _) = put_image(&store, 50);
    store.tag("img", &manifest).unwrap();
    let reopened = Store::open(dir.path().join("store")).unwrap();
    assert_eq!(reopened.resolve("img").unwrap().digest, manifest);
}
