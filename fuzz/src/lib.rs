//! What the fuzz targets share: a poll loop for the DAP reader over bytes in memory, and the
//! fixture binary (built by `cargo xtask fuzz`) with the lines its probes go on.
//!
//! Why a fixture and not bytes alone: the record decoder needs decoders planned from real
//! DWARF, and mutating a real binary reaches far deeper into ELF/DWARF parsing than random
//! bytes, which fail at the ELF magic.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future that never waits on anything outside memory (a reader over a byte slice).
///
/// # Panics
/// If the future returns `Pending`: it would wait forever.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a reader over bytes in memory returned Pending"),
    }
}

/// Where `cargo xtask fuzz` puts the fixtures: `$DETRIX_FUZZ_FIXTURES`, else `fuzz/target/fixtures`.
#[must_use]
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("DETRIX_FUZZ_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"),
        PathBuf::from,
    )
}

/// The C fixture `orders` (`gcc -g -O0`), as bytes.
///
/// # Panics
/// If it was not built: run the target through `cargo xtask fuzz`.
#[must_use]
pub fn orders_binary() -> (PathBuf, Vec<u8>) {
    let path = fixtures_dir().join("orders");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); run the fuzz targets with `cargo xtask fuzz`, which builds it",
            path.display()
        )
    });
    (path, bytes)
}

/// Lines of `orders.c` marked `PROBE:<name>`, in file order.
#[must_use]
pub fn orders_probe_lines() -> Vec<u32> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/c/orders.c");
    let text = std::fs::read_to_string(&src).unwrap_or_default();
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains("PROBE:"))
        .filter_map(|(i, _)| u32::try_from(i + 1).ok())
        .collect()
}

/// Expressions worth planning at the probe lines of `orders.c`.
pub const ORDERS_EXPRS: &[&str] = &[
    "round",
    "o->id",
    "o->qty",
    "o->flags",
    "o->price",
    "o->grade",
    "o->customer",
    "o->code",
    "*o",
    "o",
    "cost",
    "g_counter",
    "s_total",
    "g_label",
    "customers",
    "copy",
    "first",
    "total",
    "o.code",
    "o.customer",
];
