use std::collections::HashSet;

use bytes::Bytes;
use futures_util::stream;

use super::*;

fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let parts: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(parts)
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::TempDir::new().unwrap();
    let s = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, s)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn digests_parse_and_print() {
    let d = Digest::of(b"abc");
    assert_eq!(
        d.to_string(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(format!("sha256:{d}").parse::<Digest>().unwrap(), d);
    assert_eq!(d.to_string().to_uppercase().parse::<Digest>().unwrap(), d);
    for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63)] {
        assert!(bad.parse::<Digest>().is_err(), "{bad}");
    }
}

#[test]
fn manifest_digest_is_stable_and_sensitive() {
    let a = ArtifactRef {
        name: "vmlinuz".into(),
        digest: Digest::of(b"k"),
        size: 1,
    };
    let m = Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(a.clone()),
        initrds: vec![a.clone()],
        rootfs: None,
        cmdline: "console=ttyS0".into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    };
    assert_eq!(m.digest(), m.clone().digest());
    let json = String::from_utf8(m.canonical_json()).unwrap();
    assert!(
        json.starts_with("{\"arch\":\"x86_64\",\"kernel\":{\"name\":\"vmlinuz\""),
        "{json}"
    );
    let mut n = m.clone();
    n.cmdline.push(' ');
    assert_ne!(m.digest(), n.digest());
    let mut n = m.clone();
    n.initrds[0].size = 2;
    assert_ne!(m.digest(), n.digest());
}

#[tokio::test]
async fn streamed_put_is_verified_and_stored_once() {
    let (_d, s) = store();
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = Digest::of(&data);
    let info = s
        .put_artifact(Some(want), u64::MAX, chunks(&data, 65_536))
        .await
        .unwrap();
    assert_eq!((info.digest, info.size), (want, data.len() as u64));
    let path = s.artifact_path(&want);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    let again = s
        .put_artifact(None, u64::MAX, chunks(&data, 1_000_000))
        .await
        .unwrap();
    assert_eq!(again.digest, want);
    assert_eq!(files_in(&s.root.join("artifacts/sha256")).len(), 1);
    assert!(files_in(&s.root.join("tmp")).is_empty());
}

#[tokio::test]
async fn mismatch_too_large_and_broken_bodies_leave_nothing() {
    let (_d, s) = store();
    let wrong = Digest::of(b"something else");
    let err = s
        .put_artifact(Some(wrong), u64::MAX, chunks(b"corrupt", 3))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    let err = s
        .put_artifact(None, 10, chunks(&[0u8; 100], 7))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { limit: 10 }), "{err}");
    let broken = stream::iter(vec![
        Ok(Bytes::from_static(b"part")),
        Err(std::io::Error::other("connection reset")),
    ]);
    let err = s.put_artifact(None, u64::MAX, broken).await.unwrap_err();
    assert!(matches!(err, ImageError::Body(_)), "{err}");
    assert!(files_in(&s.root.join("artifacts/sha256")).is_empty());
    assert!(files_in(&s.root.join("tmp")).is_empty());
}

#[tokio::test]
async fn a_crash_before_the_rename_leaves_no_visible_half_image() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().join("images");
    let s = ImageStore::open(&root).unwrap();
    // What a crash mid-upload leaves: a partial file in tmp/, nothing else.
    std::fs::write(root.join("tmp/4242-0"), b"half an initrd").unwrap();
    drop(s);
    let s = ImageStore::open(&root).unwrap();
    assert!(
        files_in(&root.join("tmp")).is_empty(),
        "reopening removes crash leftovers"
    );
    assert!(files_in(&root.join("artifacts/sha256")).is_empty());
    assert!(s
        .artifact_size(&Digest::of(b"half an initrd"))
        .await
        .is_none());
}

#[tokio::test]
async fn concurrent_puts_of_the_same_content_both_succeed_once_on_disk() {
    let (_d, s) = store();
    let s = std::sync::Arc::new(s);
    let data = vec![5u8; 3_000_000];
    let (a, b) = tokio::join!(
        s.put_artifact(None, u64::MAX, chunks(&data, 4096)),
        s.put_artifact(None, u64::MAX, chunks(&data, 8192))
    );
    assert_eq!(a.unwrap().digest, b.unwrap().digest);
    assert_eq!(files_in(&s.root.join("artifacts/sha256")).len(), 1);
}

#[tokio::test]
async fn manifests_round_trip_refuse_missing_artifacts_and_detect_tampering() {
    let (_d, s) = store();
    let k = s
        .put_artifact(None, u64::MAX, chunks(b"kernel", 2))
        .await
        .unwrap();
    let i = s
        .put_artifact(None, u64::MAX, chunks(b"initrd", 2))
        .await
        .unwrap();
    let art = |name: &str, info: ArtifactInfo| ArtifactRef {
        name: name.into(),
        digest: info.digest,
        size: info.size,
    };
    let m = Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(art("vmlinuz", k)),
        initrds: vec![art("initrd.img", i)],
        rootfs: None,
        cmdline: "x".into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    };
    let d = s.put_manifest(&m).await.unwrap();
    assert_eq!(d, m.digest());
    assert_eq!(s.read_manifest(&d).await.unwrap(), m);

    let mut wrong_size = m.clone();
    wrong_size.kernel.as_mut().unwrap().size = 99;
    assert!(matches!(
        s.put_manifest(&wrong_size).await,
        Err(ImageError::InvalidManifest(_))
    ));
    let mut missing = m.clone();
    missing.initrds[0].digest = Digest::of(b"never uploaded");
    assert!(matches!(
        s.put_manifest(&missing).await,
        Err(ImageError::InvalidManifest(_))
    ));

    let path = s.manifest_path(&d);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"{\"tampered\":true}").unwrap();
    assert!(matches!(
        s.read_manifest(&d).await,
        Err(ImageError::DigestMismatch { .. })
    ));
    assert!(matches!(
        s.read_manifest(&Digest::of(b"nope")).await,
        Err(ImageError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_dropped_upload_leaves_no_temporary_file() {
    let (_d, s) = store();
    let endless = stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from_static(&[1u8; 4096])));
    let put = s.put_artifact(None, u64::MAX, endless);
    // The client hangs up: the upload future is dropped mid-stream.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), put)
            .await
            .is_err()
    );
    assert!(files_in(&s.root.join("tmp")).is_empty());
}

#[tokio::test]
async fn gc_keeps_referenced_files_and_removes_the_rest() {
    let (_d, s) = store();
    let shared = s
        .put_artifact(None, u64::MAX, chunks(b"shared kernel", 4))
        .await
        .unwrap();
    let old = s
        .put_artifact(None, u64::MAX, chunks(b"old initrd", 4))
        .await
        .unwrap();
    let new = s
        .put_artifact(None, u64::MAX, chunks(b"new initrd", 4))
        .await
        .unwrap();
    let art = |info: ArtifactInfo| ArtifactRef {
        name: "f".into(),
        digest: info.digest,
        size: info.size,
    };
    let m_old = Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(art(shared)),
        initrds: vec![art(old)],
        rootfs: None,
        cmdline: "".into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    };
    let m_new = Manifest {
        initrds: vec![art(new)],
        ..m_old.clone()
    };
    let (d_old, d_new) = (
        s.put_manifest(&m_old).await.unwrap(),
        s.put_manifest(&m_new).await.unwrap(),
    );
    // An orphan upload (an import in progress) is young: spared.
    let orphan = s
        .put_artifact(None, u64::MAX, chunks(b"uploaded, not yet named", 4))
        .await
        .unwrap();
    let report = s
        .gc(&HashSet::from([d_new]), &HashSet::from([d_old]))
        .await
        .unwrap();
    assert_eq!((report.manifests_removed, report.artifacts_removed), (1, 1));
    assert!(
        s.artifact_size(&orphan.digest).await.is_some(),
        "young orphans survive"
    );
    assert!(
        s.artifact_size(&shared.digest).await.is_some(),
        "still used by the kept image"
    );
    assert!(s.artifact_size(&old.digest).await.is_none());
    assert!(s.read_manifest(&d_old).await.is_err());
    assert!(s.read_manifest(&d_new).await.is_ok());
}

#[test]
fn live_os_manifest_bytes_did_not_change_and_installers_have_their_own_shape() {
    let a = ArtifactRef {
        name: "vmlinuz".into(),
        digest: Digest::of(b"k"),
        size: 1,
    };
    let live = Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(a.clone()),
        initrds: vec![a.clone()],
        rootfs: None,
        cmdline: "c".into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    };
    let d = a.digest.to_string();
    assert_eq!(
        String::from_utf8(live.canonical_json()).unwrap(),
        format!(
            "{{\"arch\":\"x86_64\",\"kernel\":{{\"name\":\"vmlinuz\",\"digest\":\"{d}\",\"size\":1}},\
             \"initrds\":[{{\"name\":\"vmlinuz\",\"digest\":\"{d}\",\"size\":1}}],\"rootfs\":null,\"cmdline\":\"c\"}}"
        ),
        "the manifest format from before installers existed"
    );
    assert_eq!(live.check_shape(), Ok(()));
    let installer = Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: None,
        initrds: vec![],
        rootfs: None,
        cmdline: String::new(),
        installer: Some(a.clone()),
        uki: None,
        rootfs_verity: None,
    };
    assert_eq!(installer.check_shape(), Ok(()));
    assert!(installer.is_installer());
    let parsed: Manifest = serde_json::from_str(&format!(
        "{{\"arch\":\"x86_64\",\"installer\":{{\"name\":\"onie-installer.bin\",\"digest\":\"{d}\",\"size\":1}}}}"
    ))
    .unwrap();
    assert_eq!(parsed.check_shape(), Ok(()));
    let both = Manifest {
        kernel: Some(a.clone()),
        ..installer.clone()
    };
    assert_eq!(both.check_shape().unwrap_err().0, "installer");
    let bare = Manifest {
        installer: None,
        uki: None,
        rootfs_verity: None,
        ..installer.clone()
    };
    assert_eq!(bare.check_shape().unwrap_err().0, "kernel");
    // A unified kernel image stands alone: its command line is sealed in it.
    let uki = Manifest {
        installer: None,
        uki: Some(a.clone()),
        ..installer
    };
    assert_eq!(uki.check_shape(), Ok(()));
    assert!(!uki.is_installer());
    let uki_json = String::from_utf8(uki.canonical_json()).unwrap();
    assert!(
        uki_json.contains("\"uki\":{") && !uki_json.contains("installer"),
        "{uki_json}"
    );
    for wrong in [
        Manifest {
            kernel: Some(a.clone()),
            ..uki.clone()
        },
        Manifest {
            cmdline: "console=ttyS0".into(),
            ..uki.clone()
        },
        Manifest {
            installer: Some(a.clone()),
            ..uki.clone()
        },
    ] {
        assert_eq!(wrong.check_shape().unwrap_err().0, "uki");
    }
    assert!(
        !String::from_utf8(live.canonical_json())
            .unwrap()
            .contains("uki"),
        "a live OS's digest is unchanged"
    );
    let no_initrd = Manifest {
        initrds: vec![],
        ..live
    };
    assert_eq!(no_initrd.check_shape().unwrap_err().0, "initrds");
}

/// An artifact an import was just told is present (so it will not upload
/// it) survives a collection that released the only image using it, and a
/// collection waits for an import that holds the guard.
#[tokio::test]
async fn gc_spares_claimed_artifacts_and_waits_for_imports() {
    let (_d, s) = store();
    let s = std::sync::Arc::new(s);
    let kernel = s
        .put_artifact(None, u64::MAX, chunks(b"kernel used by the old image", 4))
        .await
        .unwrap();
    let initrd = s
        .put_artifact(None, u64::MAX, chunks(b"initrd", 4))
        .await
        .unwrap();
    let art = |info: ArtifactInfo| ArtifactRef {
        name: "f".into(),
        digest: info.digest,
        size: info.size,
    };
    let m = Manifest {
        arch: crate::domain::Cpu::X86_64,
        kernel: Some(art(kernel)),
        initrds: vec![art(initrd)],
        rootfs: None,
        cmdline: "".into(),
        installer: None,
        uki: None,
        rootfs_verity: None,
    };
    let d = s.put_manifest(&m).await.unwrap();
    // A new import asks whether the kernel is there: yes.
    assert_eq!(s.claim_if_present(&kernel.digest).await, Some(kernel.size));
    // The old image is released; its unclaimed initrd goes, the kernel stays.
    let report = s.gc(&HashSet::new(), &HashSet::from([d])).await.unwrap();
    assert_eq!(report.artifacts_removed, 1);
    assert!(s.artifact_size(&kernel.digest).await.is_some());
    assert!(s.artifact_size(&initrd.digest).await.is_none());

    let importing = s.importing().await;
    let collector = {
        let s = s.clone();
        tokio::spawn(async move {
            let _collecting = s.collecting().await;
            s.gc(&HashSet::new(), &HashSet::new()).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !collector.is_finished(),
        "gc waits while an import holds the guard"
    );
    drop(importing);
    tokio::time::timeout(std::time::Duration::from_secs(5), collector)
        .await
        .expect("gc runs once the import is done")
        .unwrap();
}
