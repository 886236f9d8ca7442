//! Cyclic types (issue #12 point 5): a C struct that points to itself reads as a struct with a
//! pointer member, and DWARF mutated so that a type refers to itself directly (a pointer to
//! itself, an array of itself, an enum over itself, a typedef of itself) is answered with a
//! bounded name, no size, or a refusal — never a hang or a stack overflow.

use std::path::Path;
use std::process::Command;

use gimli::constants as dw;

use super::types::{Type, TypeRef, MAX_TYPE_DEPTH};
use super::Binary;

const SRC: &str = r#"
struct node { struct node *next; int v; };
typedef struct node node_t;
enum color { RED = 1, GREEN = 2 };
struct node head = { &head, 7 };
node_t *tp = &head;
int arr[3] = { 1, 2, 3 };
enum color col = GREEN;
int main(void) {
    return head.v + arr[0] + (int)col + (tp != 0); /* LINE */
}
"#;

/// The test program built with `gcc -g -O0` in a directory of its own (`tag`), and its bytes.
fn build(tag: &str) -> (std::path::PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("detrix-cyclic-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("cyc.c");
    std::fs::write(&src, SRC).unwrap();
    let exe = dir.join("cyc");
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc runs");
    assert!(st.success());
    let bytes = std::fs::read(&exe).unwrap();
    (dir, bytes)
}

/// A type DIE whose `DW_AT_type` is a `DW_FORM_ref4`: its tag, where it is, and the file
/// offset of that reference.
struct Site {
    tag: gimli::DwTag,
    name: Option<String>,
    at: TypeRef,
    file_pos: usize,
}

fn sites(b: &Binary, bytes: &[u8]) -> Vec<Site> {
    use object::{Object as _, ObjectSection as _};
    let obj = object::File::parse(bytes).unwrap();
    let (info_off, _) = obj
        .section_by_name(".debug_info")
        .unwrap()
        .file_range()
        .unwrap();
    let mut out = Vec::new();
    for (ui, unit) in b.units.iter().enumerate() {
        let base = unit.header.offset().0;
        let mut raw = unit.entries_raw(None).unwrap();
        while !raw.is_empty() {
            let die = raw.next_offset();
            let Some(abbrev) = raw.read_abbreviation().unwrap() else {
                continue;
            };
            let tag = abbrev.tag();
            let mut name = None;
            let mut pos = None;
            for spec in abbrev.attributes() {
                let here = raw.next_offset();
                let attr = raw.read_attribute(*spec).unwrap();
                if attr.name() == dw::DW_AT_type && spec.form() == dw::DW_FORM_ref4 {
                    pos = Some(here.0);
                }
                if attr.name() == dw::DW_AT_name {
                    name = b.dwarf.attr_string(unit, attr.value()).ok().map(|s| {
                        use gimli::Reader as _;
                        s.to_string_lossy().unwrap().into_owned()
                    });
                }
            }
            if let Some(p) = pos {
                out.push(Site {
                    tag,
                    name,
                    at: TypeRef {
                        unit: ui,
                        offset: die.0,
                    },
                    file_pos: info_off as usize + base + p,
                });
            }
        }
    }
    out
}

/// `bytes` with the type at `site` made to refer to itself, parsed.
fn self_referring(bytes: &[u8], site: &Site) -> Binary {
    let mut patched = bytes.to_vec();
    let own = u32::try_from(site.at.offset).unwrap().to_le_bytes();
    patched[site.file_pos..site.file_pos + 4].copy_from_slice(&own);
    Binary::from_bytes(Path::new("/test/cyc"), &patched).unwrap()
}

fn line() -> u32 {
    SRC.lines().position(|l| l.contains("/* LINE */")).unwrap() as u32
}

#[test]
fn a_struct_pointing_to_itself_is_a_struct_with_a_pointer_member() {
    let (dir, bytes) = build("plain");
    let b = Binary::from_bytes(Path::new("/test/cyc"), &bytes).unwrap();
    let out = crate::engine::describe(
        &b,
        "cyc.c",
        line(),
        &[
            "head".into(),
            "*head.next".into(),
            "head.next->next->v".into(),
            "tp->next->next->next->v".into(),
        ],
        "",
    );
    let text = serde_json::to_string_pretty(&out).unwrap();
    let ops = |e: &str| -> Vec<String> {
        let v = &out["points"][0]["values"][e]["ops"];
        let all: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("{e}: {text}"))
            .iter()
            .map(|o| o.as_str().unwrap().to_owned())
            .collect();
        // After the global's address (where the linker put it): what is read.
        all[1..].to_vec()
    };
    assert_eq!(ops("head"), ["v0: emit_mem 16 +0 @0"]);
    assert_eq!(
        ops("*head.next"),
        ["v0: deref 8 +0", "v0: emit_mem 16 +0 @0"]
    );
    assert_eq!(
        ops("head.next->next->v"),
        ["v0: deref 8 +0", "v0: deref 8 +0", "v0: emit_mem 4 +8 @0"]
    );
    assert_eq!(
        ops("tp->next->next->next->v"),
        [
            "v0: deref 8 +0",
            "v0: deref 8 +0",
            "v0: deref 8 +0",
            "v0: deref 8 +0",
            "v0: emit_mem 4 +8 @0"
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_type_that_refers_to_itself_is_bounded_never_a_stack_overflow() {
    let (dir, bytes) = build("mutated");
    let orig = Binary::from_bytes(Path::new("/test/cyc"), &bytes).unwrap();
    let all = sites(&orig, &bytes);
    let pick = |tag: gimli::DwTag, name: Option<&str>| {
        all.iter()
            .find(|s| s.tag == tag && (name.is_none() || s.name.as_deref() == name))
            .unwrap_or_else(|| panic!("no {tag} in the test program"))
    };
    // A pointer to itself: `T *` where T is that pointer, and so on.
    let b = self_referring(&bytes, pick(dw::DW_TAG_pointer_type, None));
    let at = Some(pick(dw::DW_TAG_pointer_type, None).at);
    let depth = MAX_TYPE_DEPTH as usize + 1;
    assert_eq!(b.type_name(at), format!("?{}", " *".repeat(depth)));
    assert_eq!(b.display_type_name(at), format!("?{}", " *".repeat(depth)));
    assert_eq!(b.size_of(at).unwrap(), Some(8));
    // An array of itself has no size.
    let site = pick(dw::DW_TAG_array_type, None);
    let b = self_referring(&bytes, site);
    assert_eq!(b.size_of(Some(site.at)).unwrap(), None);
    assert_eq!(
        b.type_name(Some(site.at)),
        format!("?{}", "[3]".repeat(depth))
    );
    // An enum over itself: its signedness from its values.
    let site = pick(dw::DW_TAG_enumeration_type, Some("color"));
    let b = self_referring(&bytes, site);
    match b.type_of(Some(site.at)).unwrap() {
        Type::Enum {
            name,
            size,
            signed,
            values,
        } => {
            assert_eq!((name.as_str(), size, signed), ("color", 4, false));
            assert_eq!(values, vec![("RED".to_owned(), 1), ("GREEN".to_owned(), 2)]);
        }
        other => panic!("{other:?}"),
    }
    // A typedef of itself: looked through at most MAX_TYPE_DEPTH times, then unsupported.
    let site = pick(dw::DW_TAG_typedef, Some("node_t"));
    let b = self_referring(&bytes, site);
    assert!(matches!(
        b.type_of(Some(site.at)).unwrap(),
        Type::Unsupported { .. }
    ));
    // And the whole pipeline on each, for every expression: an answer, never a crash.
    let mut errors = Vec::new();
    for s in &all {
        let b = self_referring(&bytes, s);
        let out = crate::engine::describe(
            &b,
            "cyc.c",
            line(),
            &[
                "head".into(),
                "*head.next".into(),
                "tp->next->v".into(),
                "arr".into(),
                "col".into(),
            ],
            "",
        );
        for v in out["points"][0]["values"].as_object().unwrap().values() {
            if let Some(e) = v["error"].as_str() {
                errors.push(e.to_owned());
            }
        }
    }
    // The pointer and the array that refer to themselves, named to the cap and refused.
    let ptrs = format!("?{}", " *".repeat(depth));
    for want in [
        format!("expression `tp->next->v`: `tp->next` is a {ptrs}, not a struct"),
        format!("expression `tp->next->v`: `tp` is a {ptrs}, not a struct"),
        format!(
            "expression `arr`: its type ?{} has no known size",
            "[3]".repeat(depth)
        ),
    ] {
        assert!(errors.contains(&want), "{want}\nnot in {errors:#?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
