//! A tagged index whose platforms are only partly in the store: the tag rule, gc, verify,
//! platform selection, export and unpack.

use std::time::Duration;

use layerstore::registry::platform::Platform;
use layerstore::store::{GcOptions, Problem};
use layerstore::unpack::{UnpackError, UnpackOptions};
use layerstore::{Algorithm, Digest, Expected, Store, StoreError};

const ARCHITECTURES: [&str; 3] = ["amd64", "arm64", "ppc64le"];

fn new_store() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path().join("store")).unwrap();
    (directory, store)
}

fn sha256(data: &[u8]) -> Digest {
    Digest::of_bytes(Algorithm::Sha256, data)
}

fn no_grace() -> GcOptions {
    GcOptions {
        grace_period: Duration::ZERO,
        ..GcOptions::default()
    }
}

/// One platform of a multi-platform image, built in memory; nothing is in a store yet.
struct PlatformImage {
    architecture: &'static str,
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl PlatformImage {
    fn new(architecture: &'static str, seed: u8) -> PlatformImage {
        let layer = format!("layer bytes of {architecture} {seed}").into_bytes();
        let config = format!(
            r#"{{"architecture":"{architecture}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha256(&layer)
        )
        .into_bytes();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},
                "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            sha256(&config),
            config.len(),
            sha256(&layer),
            layer.len()
        )
        .into_bytes();
        PlatformImage {
            architecture,
            layer,
            config,
            manifest,
        }
    }

    fn manifest_digest(&self) -> Digest {
        sha256(&self.manifest)
    }

    fn platform(&self) -> Platform {
        Platform::parse(&format!("linux/{}", self.architecture)).unwrap()
    }

    fn blobs(&self) -> [Digest; 3] {
        [
            self.manifest_digest(),
            sha256(&self.config),
            sha256(&self.layer),
        ]
    }

    /// Puts the manifest, config and layer into `store`.
    fn put(&self, store: &Store) {
        for bytes in [&self.layer, &self.config, &self.manifest] {
            store.put_bytes(bytes, Expected::default()).unwrap();
        }
    }

    fn index_entry(&self) -> String {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},
                "platform":{{"os":"linux","architecture":"{}"}}}}"#,
            self.manifest_digest(),
            self.manifest.len(),
            self.architecture
        )
    }
}

/// Puts an index listing `platforms` (and only the index) into `store`; returns its digest.
fn put_index(store: &Store, platforms: &[PlatformImage]) -> Digest {
    let entries: Vec<String> = platforms.iter().map(PlatformImage::index_entry).collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    store
        .put_bytes(index.as_bytes(), Expected::default())
        .unwrap()
        .digest
}

fn three_platforms(seed: u8) -> Vec<PlatformImage> {
    ARCHITECTURES
        .iter()
        .map(|architecture| PlatformImage::new(architecture, seed))
        .collect()
}

#[test]
fn tag_index_with_one_platform_present() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(1);
    platforms[0].put(&store);
    let index = put_index(&store, &platforms);

    let descriptor = store.tag("app:v1", &index).unwrap();

    assert_eq!(descriptor.digest, index);
    assert_eq!(
        descriptor.media_type,
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(store.resolve("app:v1").unwrap().digest, index);
    let report = store.verify(false).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn tag_index_with_no_platform_present() {
    let (_dir, store) = new_store();
    let index = put_index(&store, &three_platforms(2));

    store.tag("app:v1", &index).unwrap();

    assert!(store.verify(false).unwrap().is_ok());
}

#[test]
fn tag_index_with_incomplete_platform_fails() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(3);
    platforms[0].put(&store);
    let arm = &platforms[1];
    store.put_bytes(&arm.manifest, Expected::default()).unwrap();
    store.put_bytes(&arm.config, Expected::default()).unwrap();
    let index = put_index(&store, &platforms);

    let error = store.tag("app:v1", &index).unwrap_err();

    let StoreError::IncompleteImage {
        ref image,
        ref digest,
        ref referenced_by,
    } = error
    else {
        panic!("expected IncompleteImage, got {error:?}");
    };
    assert_eq!(image, "app:v1");
    assert_eq!(*digest, sha256(&arm.layer));
    assert!(referenced_by.contains(&arm.manifest_digest().to_string()));
    assert!(referenced_by.contains("linux/arm64"), "{referenced_by}");
    let message = error.to_string();
    assert!(message.contains("pull the image again"), "{message}");
    assert!(store.tags().unwrap().is_empty());
}

#[test]
fn tag_single_image_still_needs_every_blob() {
    let (_dir, store) = new_store();
    let image = PlatformImage::new("amd64", 4);
    store
        .put_bytes(&image.manifest, Expected::default())
        .unwrap();
    store.put_bytes(&image.layer, Expected::default()).unwrap();

    let error = store.tag("single", &image.manifest_digest()).unwrap_err();

    assert!(
        matches!(error, StoreError::IncompleteImage { ref digest, .. } if *digest == sha256(&image.config)),
        "{error:?}"
    );
}

#[test]
fn gc_keeps_present_platform_and_removes_unreachable() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(5);
    platforms[0].put(&store);
    let index = put_index(&store, &platforms);
    store.tag("app:v1", &index).unwrap();
    let stray = store
        .put_bytes(b"unreferenced", Expected::default())
        .unwrap()
        .digest;

    let report = store.gc(&no_grace()).unwrap();

    let removed: Vec<&Digest> = report.removed_blobs.iter().map(|b| &b.digest).collect();
    assert_eq!(removed, vec![&stray]);
    assert!(store.has(&index));
    for digest in platforms[0].blobs() {
        assert!(store.has(&digest), "{digest}");
    }
}

#[test]
fn resolve_platform_selects_present_platform() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(6);
    platforms[1].put(&store);
    store.tag("app:v1", &put_index(&store, &platforms)).unwrap();

    let chosen = store
        .resolve_platform("app:v1", &platforms[1].platform())
        .unwrap();

    assert_eq!(chosen.digest, platforms[1].manifest_digest());
}

#[test]
fn resolve_absent_platform_names_it() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(7);
    platforms[0].put(&store);
    store.tag("app:v1", &put_index(&store, &platforms)).unwrap();

    let error = store
        .resolve_platform("app:v1", &platforms[1].platform())
        .unwrap_err();

    assert!(
        matches!(error, StoreError::PlatformNotInStore { ref manifest, ref missing, .. }
            if *manifest == platforms[1].manifest_digest() && manifest == missing),
        "{error:?}"
    );
    let message = error.to_string();
    for part in [
        "linux/arm64",
        "app:v1",
        "never pulled",
        "pull that platform",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
}

#[test]
fn resolve_unlisted_platform_lists_the_others() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(8);
    store.tag("app:v1", &put_index(&store, &platforms)).unwrap();

    let error = store
        .resolve_platform("app:v1", &Platform::parse("linux/s390x").unwrap())
        .unwrap_err();

    assert!(
        matches!(error, StoreError::PlatformNotFound { ref available, .. }
            if available == "linux/amd64, linux/arm64, linux/ppc64le"),
        "{error:?}"
    );
}

#[test]
fn resolve_platform_rejects_half_a_platform() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(9);
    platforms[0].put(&store);
    store.tag("app:v1", &put_index(&store, &platforms)).unwrap();
    let layer = sha256(&platforms[0].layer);
    store.delete(&layer, true).unwrap();

    let error = store
        .resolve_platform("app:v1", &platforms[0].platform())
        .unwrap_err();

    assert!(
        matches!(error, StoreError::PlatformNotInStore { ref missing, .. } if *missing == layer),
        "{error:?}"
    );
    assert!(error.to_string().contains(&layer.to_string()));
}

#[test]
fn resolve_platform_of_single_image_returns_it() {
    let (_dir, store) = new_store();
    let image = PlatformImage::new("arm64", 10);
    image.put(&store);
    store.tag("single", &image.manifest_digest()).unwrap();

    let chosen = store
        .resolve_platform("single", &Platform::parse("linux/amd64").unwrap())
        .unwrap();

    assert_eq!(chosen.digest, image.manifest_digest());
}

#[test]
fn verify_reports_incomplete_platform_not_absent_one() {
    let (_dir, store) = new_store();
    let platforms = three_platforms(11);
    platforms[0].put(&store);
    store.tag("app:v1", &put_index(&store, &platforms)).unwrap();
    let config = sha256(&platforms[0].config);
    store.delete(&config, true).unwrap();

    let report = store.verify(false).unwrap();

    assert_eq!(
        report.problems,
        vec![Problem::Missing {
            digest: config,
            referenced_by: platforms[0].manifest_digest().to_string(),
        }]
    );
}

#[test]
fn export_and_import_keep_partial_index() {
    let (dir, store) = new_store();
    let platforms = three_platforms(12);
    platforms[2].put(&store);
    let index = put_index(&store, &platforms);
    store.tag("app:v1", &index).unwrap();
    let layout = dir.path().join("layout");

    store.export_layout(&layout, None).unwrap();
    let copy = Store::open(dir.path().join("copy")).unwrap();
    copy.import_layout(&layout, None).unwrap();

    assert_eq!(copy.resolve("app:v1").unwrap().digest, index);
    for digest in platforms[2].blobs() {
        assert!(copy.has(&digest), "{digest}");
    }
    assert!(!copy.has(&platforms[0].manifest_digest()));
    assert!(matches!(
        copy.resolve_platform("app:v1", &platforms[0].platform()),
        Err(StoreError::PlatformNotInStore { .. })
    ));
    assert!(copy.verify(false).unwrap().is_ok());
}

#[test]
fn unpack_of_absent_host_platform_fails_before_writing() {
    let (dir, store) = new_store();
    let host = Platform::host();
    // Leaked so the test can build the host's platform like the others; it runs once.
    let host_architecture: &'static str = Box::leak(host.architecture.clone().into_boxed_str());
    let platforms = [
        PlatformImage::new("s390x", 13),
        PlatformImage::new(host_architecture, 14),
    ];
    platforms[0].put(&store);
    let index = put_index(&store, &platforms);
    store.tag("app:v1", &index).unwrap();
    let target = dir.path().join("rootfs");

    let error = layerstore::unpack::unpack(&store, "app:v1", &target, &UnpackOptions::default())
        .unwrap_err();

    assert!(
        matches!(error, UnpackError::Store(StoreError::PlatformNotInStore { ref platform, .. })
            if *platform == host.to_string()),
        "{error:?}"
    );
    assert!(!target.exists());
}

#[test]
fn unpack_selects_requested_platform() {
    let (dir, store) = new_store();
    let host_architecture: &'static str = Box::leak(Platform::host().architecture.into_boxed_str());
    let platforms = [
        PlatformImage::new("s390x", 15),
        PlatformImage::new(host_architecture, 16),
    ];
    platforms[1].put(&store);
    let index = put_index(&store, &platforms);
    store.tag("app:v1", &index).unwrap();
    let target = dir.path().join("rootfs");
    let options = UnpackOptions {
        platform: Some(platforms[0].platform()),
        ..UnpackOptions::default()
    };

    let error = layerstore::unpack::unpack(&store, "app:v1", &target, &options).unwrap_err();

    assert!(
        matches!(error, UnpackError::Store(StoreError::PlatformNotInStore { ref platform, .. })
            if platform == "linux/s390x"),
        "{error:?}"
    );
    assert!(!target.exists());
}

/// For every subset of present platforms: tagging succeeds, gc keeps every blob of a present
/// platform and removes the unreferenced blob, and selecting an absent platform fails.
#[test]
fn every_subset_of_present_platforms() {
    for mask in 0..(1u8 << ARCHITECTURES.len()) {
        let (_dir, store) = new_store();
        let platforms = three_platforms(20 + mask);
        let present = |position: usize| mask & (1 << position) != 0;
        for (position, platform) in platforms.iter().enumerate() {
            if present(position) {
                platform.put(&store);
            }
        }
        let index = put_index(&store, &platforms);
        store.tag("app:v1", &index).unwrap();
        let stray = store
            .put_bytes(&[mask, 0xff], Expected::default())
            .unwrap()
            .digest;

        let report = store.gc(&no_grace()).unwrap();

        let removed: Vec<&Digest> = report.removed_blobs.iter().map(|b| &b.digest).collect();
        assert_eq!(removed, vec![&stray], "mask {mask:03b}");
        assert!(store.has(&index));
        for (position, platform) in platforms.iter().enumerate() {
            let chosen = store.resolve_platform("app:v1", &platform.platform());
            if present(position) {
                for digest in platform.blobs() {
                    assert!(store.has(&digest), "mask {mask:03b}: {digest}");
                }
                assert_eq!(chosen.unwrap().digest, platform.manifest_digest());
            } else {
                assert!(
                    matches!(chosen, Err(StoreError::PlatformNotInStore { .. })),
                    "mask {mask:03b}: {chosen:?}"
                );
            }
        }
        assert!(store.verify(false).unwrap().is_ok(), "mask {mask:03b}");
    }
}
