//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so the agent ships as one file.
//!
//! Why not build it here (aya-build): the eBPF crate needs nightly, `-Z build-std` and
//! bpf-linker; keeping that in `cargo xtask build-ebpf` leaves a plain `cargo build` of the
//! agent fast and its failure message obvious.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DETRIX_EBPF_OBJ");
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest
        .parent()
        .expect("detrix-agent lives in the workspace")
        .to_owned();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    let object = std::env::var_os("DETRIX_EBPF_OBJ").map_or_else(
        || target_dir.join("bpfel-unknown-none/release/detrix-ebpf"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    assert!(
        object.exists(),
        "the eBPF object {} does not exist; run `cargo xtask build-ebpf` first \
         (or `cargo xtask test`, which does it), or point DETRIX_EBPF_OBJ at it",
        object.display()
    );
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("detrix-ebpf");
    std::fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
}
