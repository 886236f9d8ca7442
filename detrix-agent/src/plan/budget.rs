//! Budget packing: after every value's own bytes are placed, what they point to (the data of
//! Go strings and slices inside them, the structs their pointers point to, and in turn what
//! those hold) is copied as far as the plan's ops and the event's bytes last.
//!
//! Why a separate pass: the values themselves must all fit or the plan is refused with a
//! sentence; what they point to is best effort and shared fairly (every value's direct data
//! first, then element 0 of every slice, element 1, …), so one big value cannot starve the
//! others. What does not fit is shown as Delve shows what it did not load.

use detrix_common::{op, PlanOp, EVENT_DATA_BYTES, MAX_COPY_BYTES, MAX_OPS};

use super::lower::{hdr_op, mk, with_dst};
use super::shape::{
    CountedLayout, Payload, Shape, EXPANDED_ELEMS, NESTED_EXPANDED_ELEMS, NESTED_STRING_CAP,
};
use super::{Role, ValueDecoder};

/// Whether a shape holds Go strings, slices or pointers whose data is not copied yet.
pub(super) fn has_holes(shape: &Shape) -> bool {
    let mut found = Vec::new();
    holes(shape, 0, &mut Vec::new(), &mut found);
    !found.is_empty()
}

/// The nodes of a Go value that point to data not copied yet: strings and slices (not a slice
/// of structs past Delve's depth, shown from its header alone) and pointers Delve follows, each
/// as (path to the node, offset of its header or pointer). Payloads already placed are not
/// entered: elements get their data from `fill_round`.
fn holes(shape: &Shape, at: usize, path: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, usize)>) {
    go_nodes(shape, at, path, out, &|s| match s {
        Shape::Counted {
            layout,
            data: None,
            elem,
        } => layout.style.is_go() && !matches!(**elem, Shape::GoUnloaded { .. }),
        Shape::GoPtr {
            pointee: Some(_),
            target: None,
            ..
        } => true,
        _ => false,
    });
}

/// The copied Go slices inside `shape` whose elements point to data of their own, as
/// (path, offset of the slice's header): their elements are expanded one index at a time.
fn holey_slices(
    shape: &Shape,
    at: usize,
    path: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, usize)>,
) {
    go_nodes(shape, at, path, out, &|s| {
        matches!(
            s,
            Shape::Counted {
                data: Some(Payload { items: Some(_), .. }),
                ..
            }
        )
    });
}

/// The nodes of a Go value's shape that `pick` wants, as (path, byte offset from the value's
/// first byte), looking through structs, arrays and followed pointers (not into what `pick`
/// took). `at` is the offset of `shape` itself.
fn go_nodes(
    shape: &Shape,
    at: usize,
    path: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, usize)>,
    pick: &dyn Fn(&Shape) -> bool,
) {
    if pick(shape) {
        out.push((path.clone(), at));
        return;
    }
    match shape {
        Shape::GoStruct { members, .. } => {
            for (k, (_, off, m)) in members.iter().enumerate() {
                path.push(k);
                go_nodes(m, at + *off as usize, path, out, pick);
                path.pop();
            }
        }
        Shape::GoArray { items, stride, .. } => {
            for (k, m) in items.iter().enumerate() {
                path.push(k);
                go_nodes(m, at + k * *stride as usize, path, out, pick);
                path.pop();
            }
        }
        // The pointee was placed after every value's own bytes; `target` says where.
        Shape::GoPtr {
            pointee: Some(t),
            target: Some(off),
            ..
        } => {
            path.push(0);
            go_nodes(t, *off as usize, path, out, pick);
            path.pop();
        }
        _ => {}
    }
}

/// The node at `path` (as [`go_nodes`] numbers children).
fn node_mut<'s>(shape: &'s mut Shape, path: &[usize]) -> Option<&'s mut Shape> {
    let Some((&k, rest)) = path.split_first() else {
        return Some(shape);
    };
    let child = match shape {
        Shape::GoStruct { members, .. } => &mut members.get_mut(k)?.2,
        Shape::GoArray { items, .. } => items.get_mut(k)?,
        Shape::GoPtr {
            pointee: Some(t),
            target: Some(_),
            ..
        } => t.as_mut(),
        _ => return None,
    };
    node_mut(child, rest)
}

/// Bytes copied for the data of a nested Go string or slice.
fn nested_cap(layout: &CountedLayout, elem: &Shape, caps: Caps) -> u64 {
    if layout.style.is_text() {
        u64::from(caps.string.min(NESTED_STRING_CAP))
    } else if has_holes(elem) {
        layout.stride * EXPANDED_ELEMS.min(u64::from(caps.elems))
    } else {
        layout.stride * u64::from(caps.elems)
    }
    .min(MAX_COPY_BYTES as u64)
}

/// [`PlanOptions::string_cap`] and [`PlanOptions::elem_cap`], for the nested data.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caps {
    pub(super) string: u32,
    pub(super) elems: u32,
}

/// The plan's remaining room, shared by the nested data of every value.
pub(super) struct Room {
    /// Ops added here, to follow the plan's `before` ops.
    pub(super) ops: Vec<PlanOp>,
    pub(super) before: usize,
    /// First free byte of the event's data.
    pub(super) end: usize,
}

impl Room {
    fn fits(&self, n_ops: usize, bytes: u64) -> bool {
        self.before + self.ops.len() + n_ops <= MAX_OPS
            && self.end as u64 + bytes <= EVENT_DATA_BYTES as u64
    }

    /// Places `bytes` of data; returns its offset in the event.
    fn place(&mut self, bytes: u64) -> usize {
        let at = self.end;
        self.end = (self.end + bytes as usize + 7) & !7;
        at
    }

    /// An empty room for ops that will follow one guard op of this one ([`Room::commit`]).
    fn guarded(&self) -> Room {
        Room {
            ops: Vec::new(),
            before: self.before + self.ops.len() + 1,
            end: self.end,
        }
    }

    /// Adds `guard`, a `SKIP_LE` skipping all of `sub`'s ops, then them.
    fn commit(&mut self, mut guard: PlanOp, sub: Room) {
        guard.len = sub.ops.len() as u16;
        self.ops.push(guard);
        self.ops.extend(sub.ops);
        self.end = sub.end;
    }

    /// The `HDR` + `EMIT_VAR` pair copying the data of the header at `hdr` (event offset) of
    /// value `vi` to a new place; returns that place's payload (offsets relative to `base`,
    /// the value's first byte).
    fn copy_data(
        &mut self,
        vi: usize,
        base: usize,
        hdr: usize,
        layout: &CountedLayout,
        cap: u64,
        items: bool,
    ) -> Payload {
        let at = self.place(cap);
        let mut h = hdr_op(layout, hdr as u16);
        h.value = vi as u8;
        let mut var = with_dst(mk(op::EMIT_VAR, 0, cap as u16, 0), at as u16);
        var.value = vi as u8;
        self.ops.push(h);
        self.ops.push(var);
        Payload {
            at: at - base,
            cap,
            items: items.then(Vec::new),
        }
    }

    /// The `HDR` + `EMIT_MEM` pair copying the `size` bytes the pointer at `ptr` (event offset)
    /// of value `vi` points to, zeros when it is nil, to a new place; returns its offset from
    /// `base`. The zeros keep what is followed from inside a nil pointee empty: lengths 0, nil.
    fn follow(&mut self, vi: usize, base: usize, ptr: usize, size: u64) -> u64 {
        let at = self.place(size);
        let mut h = with_dst(mk(op::HDR, 0, 0, 0), ptr as u16);
        h.value = vi as u8;
        let mut mem = with_dst(
            mk(op::EMIT_MEM, op::EMIT_MEM_NIL_ZEROS, size as u16, 0),
            at as u16,
        );
        mem.value = vi as u8;
        self.ops.push(h);
        self.ops.push(mem);
        (at - base) as u64
    }
}

/// Copies what the nodes of `shape` (at offset `at` of value `vi`, whose first byte is at
/// event offset `base`) point to, as far as `room` lasts: the data of its strings and slices,
/// the pointees of its pointers, then theirs, and so on; not the elements of slices whose
/// elements need copies of their own (see [`fill_round`]).
fn fill_direct(shape: &mut Shape, at: usize, vi: usize, base: usize, room: &mut Room, caps: Caps) {
    loop {
        let mut found = Vec::new();
        holes(shape, at, &mut Vec::new(), &mut found);
        let mut progress = false;
        for (path, off) in found {
            match node_mut(shape, &path) {
                Some(Shape::Counted { layout, elem, data }) => {
                    let cap = nested_cap(layout, elem, caps);
                    if room.fits(2, cap) {
                        *data = Some(room.copy_data(
                            vi,
                            base,
                            base + off,
                            layout,
                            cap,
                            has_holes(elem),
                        ));
                        progress = true;
                    }
                }
                Some(Shape::GoPtr { size, target, .. }) if room.fits(2, *size) => {
                    *target = Some(room.follow(vi, base, base + off, *size));
                    progress = true;
                }
                _ => {}
            }
        }
        if !progress {
            return;
        }
    }
}

/// Expands element `i` of every copied slice in `shape` whose elements need copies of their
/// own (a `[]string`, a `[]main.Line` of structs with strings): the element's own data, then
/// its slices' first [`NESTED_EXPANDED_ELEMS`] elements, recursively, behind one `SKIP_LE` on
/// the slice's length,
/// since the headers past it are stale. An element whose data does not fit at all is not
/// shown, nor any after it (Delve's `...+N more`); one that fits in part shows what was copied.
fn fill_round(
    shape: &mut Shape,
    at: usize,
    i: u64,
    vi: usize,
    base: usize,
    room: &mut Room,
    caps: Caps,
) {
    let mut slices = Vec::new();
    holey_slices(shape, at, &mut Vec::new(), &mut slices);
    for (path, hdr) in slices {
        let Some(Shape::Counted {
            layout,
            elem,
            data: Some(p),
        }) = node_mut(shape, &path)
        else {
            continue;
        };
        let Some(items) = &mut p.items else { continue };
        // Element i's header was copied, and the ones before it are shown.
        if items.len() as u64 != i || (i + 1) * layout.stride > p.cap {
            continue;
        }
        let mut e = (**elem).clone();
        let mut sub = room.guarded();
        let e_at = p.at + (i * layout.stride) as usize;
        fill_direct(&mut e, e_at, vi, base, &mut sub, caps);
        for j in 0..NESTED_EXPANDED_ELEMS {
            fill_round(&mut e, e_at, j, vi, base, &mut sub, caps);
        }
        if sub.ops.is_empty() {
            // Nothing copied: shown from its header alone if it needs nothing more.
            if !has_holes(&e) {
                items.push(e);
            }
            continue;
        }
        let mut guard = with_dst(
            mk(op::SKIP_LE, 0, 0, i as i64),
            (base + hdr + layout.len_off as usize) as u16,
        );
        guard.value = vi as u8;
        room.commit(guard, sub);
        items.push(e);
    }
}

/// Adds the ops that copy, at the hit, what the values point to as Delve shows it: the data of
/// the Go strings and slices inside them (a struct's string fields, a `[]string`'s elements),
/// pointer and length read back from the copied header (`HDR`) and the bytes copied after
/// every value's own (`EMIT_VAR`); the structs their pointers point to (`HDR` + `EMIT_MEM`,
/// zeros for nil), and in turn what those hold.
///
/// What fits the plan's ops and the event's bytes is copied, in this order: what every value
/// points to directly (value by value, then what that points to), then element 0 of every
/// slice of elements with data of their own, element 1, … (each behind a `SKIP_LE` on the
/// slice's length, since the headers past it are stale). What does not fit is shown as Delve
/// shows what it did not load: `"...+5 more"`, `[...+3 more]`, `*(*main.T)(0xc000…)`.
/// Nothing fails.
pub(super) fn expand(values: &mut [ValueDecoder], room: &mut Room, caps: Caps) {
    let shown = |v: &ValueDecoder| matches!(v.role, Role::Shown | Role::Local);
    for (vi, v) in values.iter_mut().enumerate() {
        if shown(v) {
            fill_direct(&mut v.shape, 0, vi, v.dst, room, caps);
        }
    }
    for i in 0..EXPANDED_ELEMS {
        for (vi, v) in values.iter_mut().enumerate() {
            if shown(v) {
                fill_round(&mut v.shape, 0, i, vi, v.dst, room, caps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::shape::fixtures::{go_layout, go_string, header};
    use crate::plan::shape::CountedStyle;
    use crate::plan::DEFAULT_ELEM_CAP;
    use crate::render::{debugger, delve, Value};
    use detrix_common::{EventHeader, Plan};

    /// [`expand`] with a 256-byte string cap and the default element cap.
    fn expand_with_default_caps(values: &mut [ValueDecoder], room: &mut Room) {
        let caps = Caps {
            string: 256,
            elems: DEFAULT_ELEM_CAP,
        };
        expand(values, room, caps);
    }

    /// A record's values as the debugger shows them.
    fn decode(values: &[ValueDecoder], h: &EventHeader, data: &[u8]) -> Vec<Value> {
        crate::decode::decode(values, h, data)
            .iter()
            .map(debugger)
            .collect()
    }

    /// A Go value read from `bytes` as Delve shows it.
    fn go_text(shape: &Shape, bytes: &[u8], rest: &[u8], addr: Option<u64>, typed: bool) -> String {
        delve::text(&crate::decode::node(shape, bytes, rest, addr), typed)
    }

    #[test]
    fn expansion_degrades_to_fewer_elements_when_ops_run_out() {
        let slice = Shape::Counted {
            layout: go_layout("[]string", CountedStyle::GoSlice, 16),
            elem: Box::new(go_string()),
            data: Some(Payload {
                at: 24,
                cap: 16 * EXPANDED_ELEMS,
                items: Some(Vec::new()),
            }),
        };
        let mut values = vec![ValueDecoder {
            expr: "tags".into(),
            hidden: false,
            role: Role::Shown,
            shape: slice,
            dst: 0,
            size: 24 + 128,
            carrier: None,
            steps: std::sync::Arc::default(),
        }];
        // Room for one element (3 ops) but not two.
        let mut room = Room {
            ops: Vec::new(),
            before: MAX_OPS - 5,
            end: 152,
        };
        expand_with_default_caps(&mut values, &mut room);
        assert_eq!(room.ops.len(), 3, "one element's guard, HDR and EMIT_VAR");
        let tail: Vec<String> = describe(&room.ops);
        assert_eq!(
            tail,
            [
                "v0: skip 2 if @8 <= 0",
                "v0: hdr @24 ptr+0 len+8 x1",
                "v0: emit_var 64 @152"
            ]
        );
        // Three tags at the hit: the first shown, the rest counted, as Delve marks a cut.
        let mut data = header(0x1000, 3, Some(3));
        data.extend(header(0x2000, 5, None));
        data.resize(152, 0);
        data.extend(b"alice");
        let h = EventHeader::default();
        let got = decode(&values, &h, &data);
        assert_eq!(
            got,
            vec![Value::Text(
                r#"[]string len: 3, cap: 3, ["alice",...+2 more]"#.into()
            )]
        );
    }

    #[test]
    fn pointer_fields_are_followed_as_delve_does() {
        // main.T {P *main.A, L []main.A} with main.A {S string}: P followed (its pointee's
        // string too), L's elements past Delve's depth, shown by address from the header.
        let a = Shape::GoStruct {
            name: "main.A".into(),
            members: vec![("S".into(), 0, go_string())],
        };
        let p = Shape::GoPtr {
            name: "*main.A".into(),
            pointee: Some(Box::new(a)),
            size: 16,
            target: None,
        };
        let l = Shape::Counted {
            layout: go_layout("[]main.A", CountedStyle::GoSlice, 16),
            elem: Box::new(Shape::GoUnloaded {
                name: "main.A".into(),
            }),
            data: None,
        };
        let t = Shape::GoStruct {
            name: "main.T".into(),
            members: vec![("P".into(), 0, p), ("L".into(), 8, l)],
        };
        let mut values = vec![ValueDecoder {
            expr: "t".into(),
            hidden: false,
            role: Role::Shown,
            shape: t,
            dst: 0,
            size: 32,
            carrier: None,
            steps: std::sync::Arc::default(),
        }];
        let mut room = Room {
            ops: Vec::new(),
            before: 0,
            end: 32,
        };
        expand_with_default_caps(&mut values, &mut room);
        assert_eq!(
            describe(&room.ops),
            [
                "v0: hdr @0 ptr+0 len+0 x0",
                "v0: emit_mem 16 +0 @32 (nil: zeros)",
                "v0: hdr @32 ptr+0 len+8 x1",
                "v0: emit_var 64 @48"
            ]
        );
        let mut data = 0x1000u64.to_le_bytes().to_vec();
        data.extend(header(0x2000, 2, Some(2)));
        data.extend(header(0x3000, 1, None));
        data.extend(b"x");
        let got = decode(&values, &EventHeader::default(), &data);
        assert_eq!(got, vec![Value::Text(r#"main.T {P: *main.A {S: "x"}, L: []main.A len: 2, cap: 2, [(*main.A)(0x2000),(*main.A)(0x2010)]}"#.into())]);
        // Nil: the pointee read zeros, not a fault; its string is empty, nothing is shown of it.
        let mut data = vec![0u8; 8];
        data.extend(header(0, 0, Some(0)));
        data.resize(64, 0);
        let got = decode(&values, &EventHeader::default(), &data);
        assert_eq!(
            got,
            vec![Value::Text(
                "main.T {P: *main.A nil, L: []main.A len: 0, cap: 0, nil}".into()
            )]
        );
        // As elements, without type names: `*nil`, `*{…}`.
        let elem = Shape::GoArray {
            name: "[1]*main.A".into(),
            items: vec![Shape::GoPtr {
                name: "*main.A".into(),
                pointee: None,
                size: 0,
                target: None,
            }],
            count: 1,
            stride: 8,
        };
        assert_eq!(
            go_text(&elem, &[0u8; 8], &[], None, true),
            "[1]*main.A [*nil]"
        );
    }

    fn describe(ops: &[PlanOp]) -> Vec<String> {
        let mut p = Plan::empty();
        p.ops[..ops.len()].copy_from_slice(ops);
        p.n_ops = ops.len() as u32;
        crate::plan::describe_ops(&p)
    }
}
