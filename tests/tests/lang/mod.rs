//! The multi-language fixture builds (C and C++ at -O0/-O2, Rust debug/opt-level=3, Go 1.19 and
//! 1.23 with `-N -l` and optimized), their probe lines, and for each probe expression what the
//! agent must produce in that build: a value equal to what the fixture printed, or one exact
//! error. Shared by `lang_resolve_snapshots` (resolution, no process) and `lang_capture` (values
//! from the running builds).
//!
//! Builds go to `<workspace>/target/fixtures/lang/<id>`, are rebuilt only when a source is newer,
//! and are written under a temporary name then renamed, so parallel test threads and parallel
//! test binaries never see a half-written executable.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use detrix_e2e::{run_with_timeout, workspace_root};

/// How one build is compiled.
#[derive(Debug, Clone, Copy)]
pub enum Compiler {
    /// `gcc FLAGS -o OUT SRC`.
    Gcc(&'static [&'static str]),
    /// `g++ FLAGS -o OUT SRC`.
    Gxx(&'static [&'static str]),
    /// `rustc FLAGS -o OUT SRC`.
    Rustc(&'static [&'static str]),
    /// `GO build -buildvcs=false [-gcflags=all=-N -l] -o OUT .` in the source directory.
    Go { go: &'static str, no_opt: bool },
}

/// The language of a build, for what its events carry (Go events carry `goid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    C,
    Cpp,
    Rust,
    Go,
}

/// One fixture build.
#[derive(Debug, Clone, Copy)]
pub struct FixtureBuild {
    /// Unique name: the output file and the snapshot prefix, e.g. `go1.23_opt`.
    pub id: &'static str,
    pub lang: Lang,
    /// Directory under `tests/fixtures/`.
    pub dir: &'static str,
    /// The source file with the probe markers (its basename is what `--at` names).
    pub file: &'static str,
    pub compiler: Compiler,
    /// Whether the build is optimized (values may be lost there).
    pub optimized: bool,
}

const GO119: &str = "/usr/bin/go";
const GO123: &str = "/usr/lib/go-1.23/bin/go";

// The builds below are a table, one entry per compiler and flags: data, alike by design
// (`duplicates` lists them; there is no logic to share).
pub const C_O0: FixtureBuild = FixtureBuild {
    id: "c_O0",
    lang: Lang::C,
    dir: "c",
    file: "orders.c",
    compiler: Compiler::Gcc(&["-g", "-O0"]),
    optimized: false,
};
pub const C_O2: FixtureBuild = FixtureBuild {
    id: "c_O2",
    lang: Lang::C,
    dir: "c",
    file: "orders.c",
    compiler: Compiler::Gcc(&["-g", "-O2"]),
    optimized: true,
};
pub const C_OPTIMIZED_O2: FixtureBuild = FixtureBuild {
    id: "c_optimized_O2",
    lang: Lang::C,
    dir: "c",
    file: "optimized.c",
    compiler: Compiler::Gcc(&["-g", "-O2"]),
    optimized: true,
};
pub const C_DWEXPR_O2: FixtureBuild = FixtureBuild {
    id: "c_dwexpr_O2",
    lang: Lang::C,
    dir: "c",
    file: "dwexpr.c",
    compiler: Compiler::Gcc(&["-g", "-O2"]),
    optimized: true,
};
pub const CPP_O0: FixtureBuild = FixtureBuild {
    id: "cpp_O0",
    lang: Lang::Cpp,
    dir: "cpp",
    file: "orders.cpp",
    compiler: Compiler::Gxx(&["-g", "-O0"]),
    optimized: false,
};
pub const CPP_O2: FixtureBuild = FixtureBuild {
    id: "cpp_O2",
    lang: Lang::Cpp,
    dir: "cpp",
    file: "orders.cpp",
    compiler: Compiler::Gxx(&["-g", "-O2"]),
    optimized: true,
};
pub const RUST_DEBUG: FixtureBuild = FixtureBuild {
    id: "rust_debug",
    lang: Lang::Rust,
    dir: "rust_lang",
    file: "orders.rs",
    compiler: Compiler::Rustc(&["--edition", "2021", "-g"]),
    optimized: false,
};
pub const RUST_O3: FixtureBuild = FixtureBuild {
    id: "rust_O3",
    lang: Lang::Rust,
    dir: "rust_lang",
    file: "orders.rs",
    compiler: Compiler::Rustc(&["--edition", "2021", "-g", "-C", "opt-level=3"]),
    optimized: true,
};
pub const GO119_NL: FixtureBuild = FixtureBuild {
    id: "go1.19_Nl",
    lang: Lang::Go,
    dir: "go_lang",
    file: "main.go",
    compiler: Compiler::Go {
        go: GO119,
        no_opt: true,
    },
    optimized: false,
};
pub const GO119_OPT: FixtureBuild = FixtureBuild {
    id: "go1.19_opt",
    lang: Lang::Go,
    dir: "go_lang",
    file: "main.go",
    compiler: Compiler::Go {
        go: GO119,
        no_opt: false,
    },
    optimized: true,
};
pub const GO123_NL: FixtureBuild = FixtureBuild {
    id: "go1.23_Nl",
    lang: Lang::Go,
    dir: "go_lang",
    file: "main.go",
    compiler: Compiler::Go {
        go: GO123,
        no_opt: true,
    },
    optimized: false,
};
pub const GO123_OPT: FixtureBuild = FixtureBuild {
    id: "go1.23_opt",
    lang: Lang::Go,
    dir: "go_lang",
    file: "main.go",
    compiler: Compiler::Go {
        go: GO123,
        no_opt: false,
    },
    optimized: true,
};

/// The entry-value stash fixtures (`tests/fixtures/stash`): parameters dead at their line,
/// described only by `DW_OP_entry_value`, in functions no call site describes the first call of.
pub const STASH_C_O2: FixtureBuild = FixtureBuild {
    id: "stash_c_O2",
    lang: Lang::C,
    dir: "stash",
    file: "stash.c",
    compiler: Compiler::Gcc(&["-g", "-O2"]),
    optimized: true,
};
pub const STASH_RUST_O2: FixtureBuild = FixtureBuild {
    id: "stash_rust_O2",
    lang: Lang::Rust,
    dir: "stash",
    file: "entry_value.rs",
    compiler: Compiler::Rustc(&["--edition", "2021", "-g", "-C", "opt-level=2"]),
    optimized: true,
};

/// The split-statement fixtures (`tests/fixtures/split*`): statements whose code an optimizing
/// compiler splits into several row runs on different paths.
pub const SPLIT_C_O2: FixtureBuild = FixtureBuild {
    id: "split_c_O2",
    lang: Lang::C,
    dir: "split",
    file: "split.c",
    compiler: Compiler::Gcc(&["-g", "-O2"]),
    optimized: true,
};
pub const SPLIT_CPP_O2: FixtureBuild = FixtureBuild {
    id: "split_cpp_O2",
    lang: Lang::Cpp,
    dir: "split",
    file: "split.cpp",
    compiler: Compiler::Gxx(&["-g", "-O2"]),
    optimized: true,
};
pub const SPLIT_RUST_O2: FixtureBuild = FixtureBuild {
    id: "split_rust_O2",
    lang: Lang::Rust,
    dir: "split",
    file: "split.rs",
    compiler: Compiler::Rustc(&["--edition", "2021", "-g", "-C", "opt-level=2"]),
    optimized: true,
};
pub const SPLIT_GO123_OPT: FixtureBuild = FixtureBuild {
    id: "split_go1.23_opt",
    lang: Lang::Go,
    dir: "split_go",
    file: "main.go",
    compiler: Compiler::Go {
        go: GO123,
        no_opt: false,
    },
    optimized: true,
};

/// The split-statement builds, after [`ALL`] in the build locks.
pub const SPLIT: [FixtureBuild; 4] = [SPLIT_C_O2, SPLIT_CPP_O2, SPLIT_RUST_O2, SPLIT_GO123_OPT];

/// Every build, in a fixed order.
pub const ALL: [FixtureBuild; 14] = [
    C_O0,
    C_O2,
    C_OPTIMIZED_O2,
    C_DWEXPR_O2,
    STASH_C_O2,
    STASH_RUST_O2,
    CPP_O0,
    CPP_O2,
    RUST_DEBUG,
    RUST_O3,
    GO119_NL,
    GO119_OPT,
    GO123_NL,
    GO123_OPT,
];

impl FixtureBuild {
    /// `<workspace>/tests/fixtures/<dir>`, canonical (the prefix the debug info records).
    pub fn src_dir(&self) -> PathBuf {
        let dir = workspace_root()
            .join("tests")
            .join("fixtures")
            .join(self.dir);
        dir.canonicalize()
            .unwrap_or_else(|e| panic!("fixture directory {} is missing: {e}", dir.display()))
    }

    /// The source file with the probe markers.
    pub fn source(&self) -> PathBuf {
        self.src_dir().join(self.file)
    }

    /// The fixture directory as the build's debug info names it. Rust builds remap it to a
    /// fixed path: rustc lays the code out differently for checkout paths of other lengths (the
    /// path is in panic locations), which moved every address in the snapshots between machines.
    pub fn debug_dir(&self) -> PathBuf {
        match self.compiler {
            Compiler::Rustc(_) => PathBuf::from("/detrix-fixtures").join(self.dir),
            _ => self.src_dir(),
        }
    }

    /// The source file as the build's debug info names it (see [`FixtureBuild::debug_dir`]).
    pub fn debug_source(&self) -> PathBuf {
        self.debug_dir().join(self.file)
    }

    /// Every input whose change means a rebuild.
    fn inputs(&self) -> Vec<PathBuf> {
        match self.compiler {
            Compiler::Go { .. } => vec![self.source(), self.src_dir().join("go.mod")],
            _ => vec![self.source()],
        }
    }

    /// The compiler's version line, for the snapshot header.
    pub fn toolchain(&self) -> String {
        let (prog, args): (&str, &[&str]) = match self.compiler {
            Compiler::Gcc(_) => ("gcc", &["--version"]),
            Compiler::Gxx(_) => ("g++", &["--version"]),
            Compiler::Rustc(_) => ("rustc", &["--version"]),
            Compiler::Go { go, .. } => (go, &["version"]),
        };
        let out = Command::new(prog)
            .args(args)
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{prog}`: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The built executable, compiling it first unless it is newer than every input. Each build
    /// is compiled at most once per test binary; different builds compile in parallel.
    pub fn build(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static LOCKS: OnceLock<Vec<Mutex<()>>> = OnceLock::new();
        let locks = LOCKS.get_or_init(|| {
            ALL.iter()
                .chain(SPLIT.iter())
                .map(|_| Mutex::new(()))
                .collect()
        });
        let index = ALL
            .iter()
            .chain(SPLIT.iter())
            .position(|b| b.id == self.id)
            .expect("every build is in ALL or SPLIT");
        let _turn = locks[index].lock().unwrap_or_else(PoisonError::into_inner);

        let out_dir = workspace_root()
            .join("target")
            .join("fixtures")
            .join("lang");
        fs::create_dir_all(&out_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
        let out = out_dir.join(self.id);
        if let Some(built) = mtime(&out) {
            if self
                .inputs()
                .iter()
                .all(|i| mtime(i).is_some_and(|t| t <= built))
            {
                return out;
            }
        }

        let tmp = out_dir.join(format!(
            ".{}.tmp-{}-{}",
            self.id,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let src = self.source();
        let cmd = match self.compiler {
            Compiler::Gcc(flags) | Compiler::Gxx(flags) | Compiler::Rustc(flags) => {
                let prog = match self.compiler {
                    Compiler::Gcc(_) => "gcc",
                    Compiler::Gxx(_) => "g++",
                    _ => "rustc",
                };
                let mut cmd = Command::new(prog);
                // The absolute source path goes into the debug info, so --strip-prefix with the
                // fixture directory leaves only the file name.
                cmd.args(flags).arg("-o").arg(&tmp).arg(&src);
                if matches!(self.compiler, Compiler::Rustc(_)) {
                    cmd.arg(format!(
                        "--remap-path-prefix={}={}",
                        self.src_dir().display(),
                        self.debug_dir().display()
                    ));
                }
                cmd
            }
            Compiler::Go { go, no_opt } => {
                let mut cmd = Command::new(go);
                // -buildvcs=false: in a git checkout Go stamps the revision, commit time and
                // "modified" flag into the binary, which moved `main.total` between a dirty
                // tree and an exported one (0x57a6b0 vs 0x57a630), so every commit could move
                // the snapshots' addresses.
                cmd.args(["build", "-buildvcs=false"]);
                if no_opt {
                    cmd.arg("-gcflags=all=-N -l");
                }
                cmd.arg("-o")
                    .arg(&tmp)
                    .arg(".")
                    .current_dir(self.src_dir())
                    // Never download a toolchain or a module (toolchain.md §9): std only.
                    .env("GOTOOLCHAIN", "local")
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOPROXY", "off");
                cmd
            }
        };
        let out_text = run_with_timeout(cmd, std::time::Duration::from_secs(300));
        if !out_text.status.success() {
            let _ = fs::remove_file(&tmp);
            panic!(
                "building fixture {} failed: `{}`: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.id, out_text.command, out_text.status, out_text.stdout, out_text.stderr
            );
        }
        fs::rename(&tmp, &out).unwrap_or_else(|e| {
            let _ = fs::remove_file(&tmp);
            panic!("cannot move {} to {}: {e}", tmp.display(), out.display())
        });
        out
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The 1-based line of `src` carrying `PROBE:<name>` (as `/* PROBE:x */` or `// PROBE:x`).
/// Panics unless exactly one line does.
pub fn marker_line(src: &Path, name: &str) -> u32 {
    let text =
        fs::read_to_string(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.split(&format!("PROBE:{name}"))
                .nth(1)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        })
        .map(|(i, _)| u32::try_from(i + 1).expect("line number fits u32"))
        .collect();
    assert!(
        hits.len() == 1,
        "expected exactly one `PROBE:{name}` marker in {}, found it on lines {hits:?}",
        src.display()
    );
    hits[0]
}

/// What the agent must produce for one expression in one build.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// A JSON integer equal to the printed decimal under this key.
    Int(&'static str),
    /// A JSON number equal, as f64, to the printed round-trip text.
    Float(&'static str),
    /// A JSON bool equal to the printed `true`/`false`.
    Bool(&'static str),
    /// A JSON string equal to the printed text (strings, Rust chars, enum names, addresses).
    Text(&'static str),
    /// A one-character JSON string equal to the printed C `'%c'` without its quotes.
    Char(&'static str),
    /// The value equals the printed text read as JSON: a Rust `{:?}` of a number, a string or
    /// a `Vec` (`3`, `"alice"`, `[1, 2]`).
    Json(&'static str),
    /// A Rust enum printed with `{:?}`, typed: `None` → `null`, `Some(x)` → `x`,
    /// `Percent(6)` → `{"Percent": 6}`, `Retail` → `"Retail"`.
    RustDebug(&'static str),
    /// A Go `[]int` as a JSON array equal to the printed comma-separated `<key>`.
    GoInts(&'static str),
    /// A Go `[]string` as a JSON array equal to the printed comma-separated Go-quoted `<key>`.
    GoStrs(&'static str),
    /// The value equals this JSON template with each `$key` replaced by the printed value of
    /// `key` (a printed C char `'B'` by its character): `{"a": $a, "b": $b}` for a struct.
    Fmt(&'static str),
    /// A Go composite as typed JSON, checked against the Delve text the program printed under
    /// this key: `null` exactly when that is a nil, and every string, number and bool in the
    /// value (an address as Delve prints it) is in that text.
    GoNested(&'static str),
    /// Should be the inner expectation, but a known agent bug breaks it: `lang_capture` checks
    /// it only in its `#[ignore]`d known-bugs test (the reason is the second field).
    AgentBug(&'static Expect, &'static str),
    /// The expression cannot be captured in this build: `resolve` reports exactly this message,
    /// and `capture` shows it as the value's `{"error": …}` on every hit ([`per_value`]) or
    /// fails with it (a name not in scope), `{at}` standing for the probe's FILE:LINE as the agent names
    /// it (see [`error_text`]).
    Error(&'static str),
}

/// Whether an [`Expect::Error`] is about one value at the line (optimized out, or read through
/// something the agent cannot read yet): `capture` then shows it as that value's
/// `{"error": …}` on every hit; any other error (a name not in scope) fails the capture.
pub fn per_value(msg: &str) -> bool {
    msg.contains("is optimized out at")
        || msg.ends_with("which the agent cannot capture yet")
        || msg.ends_with("which a uprobe cannot read")
}

/// An [`Expect::Error`] message with `{at}` replaced by `at`.
pub fn error_text(msg: &str, at: &str) -> String {
    msg.replace("{at}", at)
}

/// One probe line of a fixture and what each expression must give there.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The marker name: `PROBE:<name>`.
    pub name: &'static str,
    /// The first word of the line the fixture prints at this probe.
    pub printed: &'static str,
    /// The expressions (captured values) identifying the printed line of the same hit, each
    /// equal to the printed key of the same name: `round`, plus what tells copies apart.
    pub keys: &'static [(&'static str, &'static str)],
    /// Values that must all be seen across the hits (one per copy of the line), as
    /// (expression, printed text): e.g. both call sites of an inlined function.
    pub copies: &'static [(&'static str, &'static str)],
    /// How many probe points (copies of the line) `resolve` must find.
    pub points: usize,
    pub exprs: Vec<(&'static str, Expect)>,
}

/// A C `struct order` as the agent's typed JSON, from the `process` line's printed fields
/// (`customer` the pointer's address, since a member's string is not copied).
const WHOLE_ORDER: &str = r#"{"id": $id, "qty": $qty, "flags": $flags, "price": $price, "grade": "$grade", "customer": "$pcust", "code": "$code"}"#;

/// The probes of `build`, with the expected outcome of every expression there.
pub fn probes(build: &FixtureBuild) -> Vec<Probe> {
    use Expect::{
        Bool, Char, Error, Float, Fmt, GoInts, GoNested, GoStrs, Int, Json, RustDebug, Text,
    };
    match build.lang {
        // Values the compiler never stored, computed at the hit from the DWARF expression
        // that describes them (the ops each uses: see the fixture's header).
        Lang::C if build.file == "dwexpr.c" => vec![
            Probe {
                name: "family",
                printed: "family",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("x", Int("x")),
                    ("y", Int("y")),
                    ("u", Int("u")),
                    ("nz", Int("nz")),
                    ("eqy", Int("eqy")),
                    ("lt", Int("lt")),
                    ("twice", Int("twice")),
                    ("masked", Int("masked")),
                    ("ored", Int("ored")),
                    ("quot", Int("quot")),
                    ("rem", Int("rem")),
                ],
            },
            Probe {
                name: "bits",
                printed: "family",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("inv", Int("inv")),
                    ("negx", Int("negx")),
                    ("shl", Int("shl")),
                    ("shr", Int("shr")),
                    ("shra", Int("shra")),
                    ("sum", Int("sum")),
                    ("diff", Int("diff")),
                    ("flipped", Int("flipped")),
                ],
            },
            Probe {
                // `x` is dead after a call: `DW_OP_entry_value(DW_OP_reg5 RDI)`, recovered
                // from main's call site (its `DW_AT_call_value` over rbx, which `stale` saved
                // on the stack, and r15), the site checked at the hit by the return address.
                name: "stale",
                printed: "stale",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![("round", Int("round")), ("x", Int("x"))],
            },
            Probe {
                // gcc's min/max shape: `lt|gt; bra +1; swap; drop` — a branch on a value only
                // the hit knows, both paths selected between in the kernel.
                name: "minmax",
                printed: "minmax",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("lo", Int("lo")),
                    ("hi", Int("hi")),
                ],
            },
            Probe {
                // An inlined copy's `s` is `DW_OP_implicit_pointer` to the caller's `v`, which
                // is in a register: `*s` reads it.
                name: "implicit",
                printed: "pointed",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![("round", Int("round")), ("*s", Int("v"))],
            },
        ],
        // Parameters dead at the line (`DW_OP_entry_value`), read from the registers the
        // entry probe saved when each frame entered its function.
        Lang::C if build.file == "stash.c" => vec![
            Probe {
                // Called through a pointer: no call site describes `x`.
                name: "viaptr",
                printed: "viaptr",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![("round", Int("round")), ("x", Int("x"))],
            },
            Probe {
                // Recursive: four live frames of `down` at once, each hit reads its own `seed`.
                name: "down",
                printed: "down",
                keys: &[("round", "round"), ("level", "level")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("level", Int("level")),
                    ("seed", Int("seed")),
                ],
            },
        ],
        Lang::Rust if build.file == "entry_value.rs" => vec![Probe {
            // A `&mut` parameter dead at the line, and the tally read through it at the hit.
            name: "bump",
            printed: "after",
            keys: &[("round", "round")],
            copies: &[],
            points: 1,
            exprs: vec![
                ("round", Int("round")),
                ("t.total", Int("total")),
                ("t.count", Int("count")),
            ],
        }],
        Lang::C if build.file == "optimized.c" => vec![
            Probe {
                // Function entry: `p` arrives split over rdi and rsi (DW_OP_piece).
                name: "entry",
                printed: "mix",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("p.a", Int("a")),
                    ("p.b", Int("b")),
                    (
                        "p",
                        Expect::AgentBug(
                            &Fmt(r#"{"a": $a, "b": $b}"#),
                            "a struct assembled from DW_OP_piece registers reads its second piece as 0",
                        ),
                    ),
                    ("k", Int("k")),
                    ("base", Error("`base` is optimized out at 0x1305 ({at}); try a line where it is live")),
                    ("sum", Error("`sum` is optimized out at 0x1305 ({at}); try a line where it is live")),
                ],
            },
            Probe {
                name: "mix",
                printed: "mix",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("k", Int("k")),
                    ("base", Int("base")),
                    ("sum", Int("sum")),
                    ("p.a", Error("`p` is optimized out at 0x131f ({at}); try a line where it is live")),
                    ("c", Error("`c` is optimized out at 0x131f ({at}); try a line where it is live")),
                ],
            },
            Probe {
                name: "later",
                printed: "later",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("c", Int("c")),
                    ("g_sink", Int("g_sink")),
                    ("k", Int("k")),
                    ("base", Int("base")),
                    ("sum", Error("`sum` is optimized out at 0x1359 ({at}); try a line where it is live")),
                ],
            },
            Probe {
                // `x` is dead after the call: only its entry value describes it.
                name: "tail",
                printed: "tail",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("y", Int("y")),
                    ("g_sink", Int("g_sink")),
                    // `x` (DW_OP_entry_value) is recovered from main's call site, but this line
                    // does not print it; `c_dwexpr_O2`'s `stale` probe checks such a value.
                ],
            },
        ],
        Lang::C => {
            let (cost, copy_qty, copy, first) = if build.optimized {
                (
                    Error("expression `cost`: `cost` lives in DWARF register 18 (a vector/FP register), which a uprobe cannot read"),
                    Error("`copy` is optimized out at 0x1248 ({at}); try a line where it is live"),
                    Error("`copy` is optimized out at 0x1248 ({at}); try a line where it is live"),
                    Error("`first` is optimized out at 0x1248 ({at}); try a line where it is live"),
                )
            } else {
                (Float("cost"), Int("copy.qty"), Fmt(WHOLE_ORDER), Char("first"))
            };
            vec![
                Probe {
                    name: "process",
                    printed: "process",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    exprs: vec![
                        ("round", Int("round")),
                        ("o->id", Int("id")),
                        ("o->qty", Int("qty")),
                        ("o->flags", Int("flags")),
                        ("o->price", Float("price")),
                        // Typed: a char as its character, a `char *` as its text (copied at the
                        // hit), a char array as its text.
                        ("o->grade", Char("grade")),
                        ("o->customer", Text("customer")),
                        ("o->code", Text("code")),
                        ("cost", cost),
                        ("g_counter", Int("g_counter")),
                        ("s_total", Int("s_total")),
                        ("copy.qty", copy_qty),
                        ("first", first),
                        ("g_label", Text("label")),
                    ],
                },
                Probe {
                    // The same line again, with whole structs and a pointer to one: a pointer
                    // by its address as lldb-dap shows it, a struct by its members as lldb's
                    // `frame variable` shows them (lldb-dap's logpoint shows only the type's
                    // name, `order`; the agent copied the members, so it shows them). A probe
                    // of its own, so the resolve snapshots keep their shape.
                    name: "lldb",
                    printed: "process",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    exprs: vec![
                        ("round", Int("round")),
                        ("o", Text("o")),
                        ("*o", Fmt(WHOLE_ORDER)),
                        ("copy", copy),
                        ("o->customer", Text("customer")),
                    ],
                },
                Probe {
                    name: "after",
                    printed: "after",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    // `total` is assigned from s_total on this line, so it prints s_total's value.
                    exprs: vec![
                        ("round", Int("round")),
                        ("cost", Float("cost")),
                        ("s_total", Int("total")),
                    ],
                },
            ]
        }
        Lang::Cpp => {
            let cost = if build.optimized {
                Error("expression `cost`: `cost` lives in DWARF register 18 (a vector/FP register), which a uprobe cannot read")
            } else {
                Float("cost")
            };
            vec![
                Probe {
                    name: "process",
                    printed: "process",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    exprs: vec![
                        ("round", Int("round")),
                        ("o->id", Int("id")),
                        ("o->qty", Int("qty")),
                        ("o->price", Float("price")),
                        ("o->status", Text("status")),
                        ("o->urgent", Bool("urgent")),
                        ("o->customer", Text("customer")),
                        ("cost", cost),
                        ("g_processed", Int("g_processed")),
                    ],
                },
                Probe {
                    name: "scale",
                    printed: "scale",
                    keys: &[("round", "round"), ("site", "site")],
                    // At -O2 `scale` is inlined at both call sites: both copies must fire.
                    copies: &[("site", "1"), ("site", "2")],
                    points: if build.optimized { 2 } else { 1 },
                    exprs: vec![
                        ("round", Int("round")),
                        ("site", Int("site")),
                        ("v", Int("v")),
                        ("r", Int("r")),
                    ],
                },
            ]
        }
        Lang::Rust => vec![
            Probe {
                name: "process",
                printed: "process",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: vec![
                    ("round", Int("round")),
                    ("o.id", Int("id")),
                    ("o.qty", Int("qty")),
                    ("o.price", Float("price")),
                    ("o.kind", RustDebug("kind")),
                    ("o.discount", RustDebug("discount")),
                    ("o.rush", Bool("rush")),
                    // As lldb-dap shows them with the Rust formatters the daemon loads: a char
                    // by its code point twice and quoted, a reference by its address; a Vec by
                    // its first elements (lldb-dap: only `size=N`; the agent copied them).
                    ("o.tag", Text("tag")),
                    ("o.customer", Text("customer")),
                    ("o.note", Text("note")),
                    ("o.items", Json("items")),
                    ("o.coupon", RustDebug("coupon")),
                    ("cost", Float("cost")),
                    ("o", Text("o")),
                ],
            },
            Probe {
                name: "describe",
                printed: "describe",
                keys: &[("round", "round"), ("what", "what")],
                // describe::<i32> and describe::<&str>: both monomorphized copies must fire.
                copies: &[("what", "qty"), ("what", "customer")],
                points: 2,
                exprs: vec![
                    ("round", Int("round")),
                    ("what", Text("what")),
                    ("value", Json("value")),
                ],
            },
            Probe {
                // An async fn after its await: the debug build keeps round, qty and fee in the
                // future's state, behind its pointer (DW_OP_deref); opt-level=3 inlines the
                // poll into main and keeps only round and sum.
                name: "settle",
                printed: "settle",
                keys: &[("round", "round")],
                copies: &[],
                points: 1,
                exprs: if build.optimized {
                    vec![
                        ("round", Int("round")),
                        ("sum", Int("sum")),
                        ("qty", Error("`qty` is not in scope at {at}; in scope: round, sum")),
                        ("fee", Error("`fee` is not in scope at {at}; in scope: round, sum")),
                    ]
                } else {
                    vec![("round", Int("round")), ("qty", Int("qty")), ("fee", Int("fee")), ("sum", Int("sum"))]
                },
            },
        ],
        Lang::Go => {
            let cost = match (build.optimized, build.id) {
                (false, _) => Float("cost"),
                (true, "go1.19_opt") => Error("expression `cost`: `cost` lives in DWARF register 18 (a vector/FP register), which a uprobe cannot read"),
                (true, _) => Error("expression `cost`: `cost` lives in DWARF register 17 (a vector/FP register), which a uprobe cannot read"),
            };
            vec![
                Probe {
                    name: "process",
                    printed: "process",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    exprs: vec![
                        ("round", Int("round")),
                        ("gid", Int("goid")),
                        ("o.ID", Int("id")),
                        ("o.Qty", Int("qty")),
                        ("o.Price", Float("price")),
                        ("o.Rush", Bool("rush")),
                        ("o.Customer", Text("customer")),
                        ("name", Text("name")),
                        ("o.Items", GoInts("items")),
                        ("o.Tags", GoStrs("tags")),
                        ("cost", cost),
                        ("total", Int("total")),
                    ],
                },
                Probe {
                    // The same line with the logpoint `{o} {o.Tags} {o.Customer} {*o}`, captured
                    // alone: the whole Order as Delve shows it, pointers followed and strings
                    // copied, all of it within one plan's ops and bytes.
                    name: "delve",
                    printed: "process",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    exprs: vec![
                        ("round", Int("round")),
                        ("o", GoNested("order")),
                        ("o.Tags", GoStrs("tags")),
                        ("o.Customer", Text("customer")),
                        ("*o", GoNested("order")),
                    ],
                },
                Probe {
                    // The same line again: a slice of structs holding a []string and a pointer
                    // (elements at Delve's level 1: strings copied, the pointer past its depth
                    // shown by address), and a pointer to a struct holding a pointer (followed
                    // twice, then by address), nil every third round.
                    name: "nested",
                    printed: "process",
                    keys: &[("round", "round")],
                    copies: &[],
                    points: 1,
                    exprs: vec![("round", Int("round")), ("o.Lines", GoNested("lines")), ("o.Ship", GoNested("ship"))],
                },
            ]
        }
    }
}
