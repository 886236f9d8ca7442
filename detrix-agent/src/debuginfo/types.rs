//! DWARF types → owned [`Type`] descriptions, one level at a time.
//!
//! Types are resolved lazily through [`TypeRef`]s: a struct lists its members' refs, not their
//! resolved types, so self-referential types (`struct node { struct node *next; }`) cost nothing.
//! `typedef`, `const`, `volatile`, `restrict` and `_Atomic` are looked through.

use gimli::constants as dw;

use super::{Binary, ResolveError, R};

/// How many levels a walk down a type goes (pointer to pointer, array of array, typedef of
/// typedef) before it stops: real types are a handful deep; a malformed type that refers to
/// itself would otherwise recurse until the stack overflows.
pub const MAX_TYPE_DEPTH: u32 = 16;

/// A type DIE somewhere in the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeRef {
    pub(super) unit: usize,
    pub(super) offset: usize,
}

/// A struct/class/union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Byte offset from the start of the aggregate.
    pub offset: u64,
    pub ty: Option<TypeRef>,
}

/// One variant of a Rust enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub discr_value: Option<u64>,
    pub name: String,
    /// Offset of the variant's payload struct, and its type.
    pub offset: u64,
    pub ty: Option<TypeRef>,
}

/// One level of a type, with qualifiers and typedefs removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Void,
    Int {
        name: String,
        size: u64,
        signed: bool,
    },
    Float {
        name: String,
        size: u64,
    },
    Bool {
        size: u64,
    },
    /// `char`, `signed char`, `unsigned char` (1 byte), or a UTF code point type.
    Char {
        name: String,
        size: u64,
        signed: bool,
    },
    Enum {
        name: String,
        size: u64,
        signed: bool,
        values: Vec<(String, i64)>,
    },
    Pointer {
        pointee: Option<TypeRef>,
    },
    Struct {
        name: String,
        size: u64,
        members: Vec<Member>,
    },
    /// A Rust enum (`DW_TAG_variant_part`): the discriminant's place and each variant with the
    /// discriminant value that selects it (`None`: the default variant, e.g. the dataful one
    /// of a niche-optimised `Option<&T>`).
    Variants {
        name: String,
        size: u64,
        discr: Option<(u64, u64)>,
        variants: Vec<Variant>,
    },
    Array {
        elem: Option<TypeRef>,
        count: Option<u64>,
    },
    Unsupported {
        what: String,
    },
}

/// A Rust enum's discriminant (offset, size), if it has one, and its variants.
type VariantPart = (Option<(u64, u64)>, Vec<Variant>);

impl Binary {
    /// Resolves a reference attribute (same unit or `DW_FORM_ref_addr`) to a [`TypeRef`].
    pub(super) fn resolve_ref(&self, ui: usize, v: &gimli::AttributeValue<R>) -> Option<TypeRef> {
        match v {
            gimli::AttributeValue::UnitRef(o) => Some(TypeRef {
                unit: ui,
                offset: o.0,
            }),
            gimli::AttributeValue::DebugInfoRef(o) => {
                let (idx, unit) = self
                    .units
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, u)| u.header.offset().0 <= o.0)?;
                let uo = o.to_unit_offset(&unit.header)?;
                Some(TypeRef {
                    unit: idx,
                    offset: uo.0,
                })
            }
            _ => None,
        }
    }

    /// The `DW_AT_type` of a DIE.
    /// The `DW_AT_type` of a DIE, following `DW_AT_abstract_origin` (an inlined copy's
    /// variables carry only their location; name and type are on the abstract instance).
    pub(super) fn type_attr(
        &self,
        ui: usize,
        entry: &gimli::DebuggingInformationEntry<R>,
    ) -> Option<TypeRef> {
        if let Some(t) = entry.attr_value(dw::DW_AT_type) {
            return self.resolve_ref(ui, &t);
        }
        let origin = self.resolve_ref(ui, &entry.attr_value(dw::DW_AT_abstract_origin)?)?;
        let e = self.units[origin.unit]
            .entry(gimli::UnitOffset(origin.offset))
            .ok()?;
        let t = e.attr_value(dw::DW_AT_type)?;
        self.resolve_ref(origin.unit, &t)
    }

    fn entry_of(&self, t: TypeRef) -> Result<gimli::DebuggingInformationEntry<R>, ResolveError> {
        self.units[t.unit]
            .entry(gimli::UnitOffset(t.offset))
            .map_err(self.dwarf_err("a type DIE"))
    }

    fn udata(entry: &gimli::DebuggingInformationEntry<R>, at: gimli::DwAt) -> Option<u64> {
        entry.attr_value(at)?.udata_value()
    }

    /// Looks through typedefs and qualifiers.
    ///
    /// # Errors
    /// Malformed DWARF.
    pub fn strip(&self, t: Option<TypeRef>) -> Result<Option<TypeRef>, ResolveError> {
        let mut cur = t;
        for _ in 0..MAX_TYPE_DEPTH {
            let Some(r) = cur else { return Ok(None) };
            let e = self.entry_of(r)?;
            match e.tag() {
                dw::DW_TAG_typedef
                | dw::DW_TAG_const_type
                | dw::DW_TAG_volatile_type
                | dw::DW_TAG_restrict_type
                | dw::DW_TAG_atomic_type => {
                    cur = self.type_attr(r.unit, &e);
                }
                _ => return Ok(Some(r)),
            }
        }
        Ok(cur)
    }

    /// Whether `t` is a signed integer, if it is a base type (one level, no recursion).
    fn base_signedness(&self, t: Option<TypeRef>) -> Result<Option<bool>, ResolveError> {
        let Some(r) = self.strip(t)? else {
            return Ok(None);
        };
        let e = self.entry_of(r)?;
        if e.tag() != dw::DW_TAG_base_type {
            return Ok(None);
        }
        Ok(match e.attr_value(dw::DW_AT_encoding) {
            Some(gimli::AttributeValue::Encoding(dw::DW_ATE_signed | dw::DW_ATE_signed_char)) => {
                Some(true)
            }
            Some(gimli::AttributeValue::Encoding(_)) => Some(false),
            _ => None,
        })
    }

    /// One level of `t` (`None` is `void`).
    ///
    /// # Errors
    /// Malformed DWARF.
    pub fn type_of(&self, t: Option<TypeRef>) -> Result<Type, ResolveError> {
        let Some(r) = self.strip(t)? else {
            return Ok(Type::Void);
        };
        let e = self.entry_of(r)?;
        let name = self.die_name(r.unit, &e).unwrap_or_default();
        let size = Self::udata(&e, dw::DW_AT_byte_size).unwrap_or(0);
        Ok(match e.tag() {
            dw::DW_TAG_base_type => {
                let enc = e.attr_value(dw::DW_AT_encoding);
                match enc {
                    Some(gimli::AttributeValue::Encoding(enc)) => match enc {
                        dw::DW_ATE_signed => Type::Int {
                            name,
                            size,
                            signed: true,
                        },
                        dw::DW_ATE_unsigned => Type::Int {
                            name,
                            size,
                            signed: false,
                        },
                        dw::DW_ATE_float => Type::Float { name, size },
                        dw::DW_ATE_boolean => Type::Bool { size },
                        dw::DW_ATE_signed_char => Type::Char {
                            name,
                            size,
                            signed: true,
                        },
                        dw::DW_ATE_unsigned_char => Type::Char {
                            name,
                            size,
                            signed: false,
                        },
                        dw::DW_ATE_UTF => Type::Char {
                            name,
                            size,
                            signed: false,
                        },
                        other => Type::Unsupported {
                            what: format!("base type `{name}` with encoding {other}"),
                        },
                    },
                    _ => Type::Unsupported {
                        what: format!("base type `{name}` without encoding"),
                    },
                }
            }
            dw::DW_TAG_pointer_type
            | dw::DW_TAG_reference_type
            | dw::DW_TAG_rvalue_reference_type => Type::Pointer {
                pointee: self.type_attr(r.unit, &e),
            },
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type | dw::DW_TAG_union_type => {
                match self.variant_part(r)? {
                    Some((discr, variants)) => Type::Variants {
                        name,
                        size,
                        discr,
                        variants,
                    },
                    None => Type::Struct {
                        name,
                        size,
                        members: self.members(r)?,
                    },
                }
            }
            dw::DW_TAG_enumeration_type => {
                let (values, any_negative) = self.enumerators(r)?;
                // The underlying type is read one level only: a (malformed) enum naming itself
                // as its own underlying type must not recurse.
                let signed = self
                    .base_signedness(self.type_attr(r.unit, &e))?
                    .unwrap_or(any_negative);
                Type::Enum {
                    name,
                    size,
                    signed,
                    values,
                }
            }
            dw::DW_TAG_array_type => Type::Array {
                elem: self.type_attr(r.unit, &e),
                count: self.array_count(r)?,
            },
            dw::DW_TAG_unspecified_type => Type::Void,
            other => Type::Unsupported {
                what: format!("{other}"),
            },
        })
    }

    /// Byte size of a type (pointers 8, arrays count × element).
    ///
    /// # Errors
    /// Malformed DWARF.
    pub fn size_of(&self, t: Option<TypeRef>) -> Result<Option<u64>, ResolveError> {
        self.size_at(t, 0)
    }

    /// [`Binary::size_of`], arrays of arrays at most [`MAX_TYPE_DEPTH`] deep (a malformed array
    /// of itself has no size).
    fn size_at(&self, t: Option<TypeRef>, depth: u32) -> Result<Option<u64>, ResolveError> {
        if depth > MAX_TYPE_DEPTH {
            return Ok(None);
        }
        Ok(match self.type_of(t)? {
            Type::Void | Type::Unsupported { .. } => None,
            Type::Int { size, .. }
            | Type::Float { size, .. }
            | Type::Bool { size }
            | Type::Char { size, .. }
            | Type::Enum { size, .. }
            | Type::Struct { size, .. }
            | Type::Variants { size, .. } => Some(size),
            Type::Pointer { .. } => Some(8),
            Type::Array { elem, count } => match (self.size_at(elem, depth + 1)?, count) {
                (Some(s), Some(c)) => s.checked_mul(c),
                _ => None,
            },
        })
    }

    /// The type's own `DW_AT_name`, after typedefs and qualifiers: Go names every type the way
    /// its source spells it (`*main.Order`, `[]string`, `[2]main.Inner`), which is how Delve
    /// shows them. `None` for a nameless type.
    #[must_use]
    pub fn dwarf_type_name(&self, t: Option<TypeRef>) -> Option<String> {
        let r = self.strip(t).ok()??;
        let e = self.entry_of(r).ok()?;
        self.die_name(r.unit, &e)
    }

    /// A type's name as lldb's `SBType::GetDisplayTypeName` spells it, which lldb-dap shows for
    /// a value with neither value nor summary (a struct, an array of non-chars): qualifiers
    /// kept (`const Order`), typedef names kept, names qualified by their namespaces
    /// (`orders::Order`), no `struct` keyword (`order`), `T *` and `T[N]`.
    #[must_use]
    pub fn display_type_name(&self, t: Option<TypeRef>) -> String {
        self.display_name_at(t, 0)
    }

    fn display_name_at(&self, t: Option<TypeRef>, depth: u32) -> String {
        let Some(r) = t else { return "void".to_owned() };
        let Ok(e) = self.entry_of(r) else {
            return "?".to_owned();
        };
        if depth > MAX_TYPE_DEPTH {
            return "?".to_owned();
        }
        let inner = || self.display_name_at(self.type_attr(r.unit, &e), depth + 1);
        match e.tag() {
            dw::DW_TAG_const_type => format!("const {}", inner()),
            dw::DW_TAG_volatile_type => format!("volatile {}", inner()),
            dw::DW_TAG_restrict_type | dw::DW_TAG_atomic_type => inner(),
            dw::DW_TAG_pointer_type => format!("{} *", inner()),
            dw::DW_TAG_reference_type => format!("{} &", inner()),
            dw::DW_TAG_rvalue_reference_type => format!("{} &&", inner()),
            dw::DW_TAG_array_type => {
                let count = match self.type_of(Some(r)) {
                    Ok(Type::Array { count: Some(n), .. }) => n.to_string(),
                    _ => String::new(),
                };
                // `const char *` + `[3]`: lldb writes no space before the brackets.
                format!("{}[{count}]", inner())
            }
            _ => {
                let name = self.die_name(r.unit, &e).unwrap_or_default();
                let mut path = self.namespaces_of(r);
                path.push(name);
                path.join("::")
            }
        }
    }

    /// The names of the namespaces (and types) enclosing the DIE `r`, outermost first.
    fn namespaces_of(&self, r: TypeRef) -> Vec<String> {
        let unit = &self.units[r.unit];
        let mut cursor = unit.entries();
        // (depth, name) of each open scope on the path to the current entry.
        let mut scopes: Vec<(isize, Option<String>)> = Vec::new();
        while let Ok(Some(e)) = cursor.next_dfs() {
            let depth = e.depth();
            while scopes.last().is_some_and(|(d, _)| *d >= depth) {
                scopes.pop();
            }
            if e.offset().0 == r.offset {
                return scopes.into_iter().filter_map(|(_, n)| n).collect();
            }
            let scope = matches!(
                e.tag(),
                dw::DW_TAG_namespace
                    | dw::DW_TAG_structure_type
                    | dw::DW_TAG_class_type
                    | dw::DW_TAG_union_type
            );
            if scope && e.has_children() {
                scopes.push((depth, self.die_name(r.unit, e)));
            }
        }
        Vec::new()
    }

    /// A C-like spelling of a type, for messages (`struct order *`, `char[8]`).
    #[must_use]
    pub fn type_name(&self, t: Option<TypeRef>) -> String {
        self.type_name_at(t, 0)
    }

    fn type_name_at(&self, t: Option<TypeRef>, depth: u32) -> String {
        if depth > MAX_TYPE_DEPTH {
            return "?".to_owned();
        }
        let Ok(stripped) = self.strip(t) else {
            return "?".to_owned();
        };
        match self.type_of(stripped) {
            Ok(Type::Void) => "void".to_owned(),
            Ok(Type::Pointer { pointee }) => format!("{} *", self.type_name_at(pointee, depth + 1)),
            Ok(Type::Array { elem, count }) => format!(
                "{}[{}]",
                self.type_name_at(elem, depth + 1),
                count.map(|c| c.to_string()).unwrap_or_default()
            ),
            Ok(Type::Struct { name, .. }) => {
                if name.is_empty() {
                    "struct <anonymous>".to_owned()
                } else {
                    format!("struct {name}")
                }
            }
            Ok(Type::Enum { name, .. } | Type::Variants { name, .. }) => format!("enum {name}"),
            Ok(Type::Int { name, .. } | Type::Float { name, .. } | Type::Char { name, .. }) => name,
            Ok(Type::Bool { .. }) => "bool".to_owned(),
            Ok(Type::Unsupported { what }) => what,
            Err(_) => "?".to_owned(),
        }
    }

    /// The type bound to a template parameter (`DW_TAG_template_type_parameter` named `name`)
    /// of a struct, e.g. `T` of Rust's `Vec<T>`.
    ///
    /// # Errors
    /// Malformed DWARF.
    pub fn template_param(
        &self,
        t: Option<TypeRef>,
        name: &str,
    ) -> Result<Option<TypeRef>, ResolveError> {
        let Some(r) = self.strip(t)? else {
            return Ok(None);
        };
        let unit = &self.units[r.unit];
        let mut tree = unit
            .entries_tree(Some(gimli::UnitOffset(r.offset)))
            .map_err(self.dwarf_err("template parameters"))?;
        let root = tree.root().map_err(self.dwarf_err("template parameters"))?;
        let mut children = root.children();
        while let Some(child) = children
            .next()
            .map_err(self.dwarf_err("template parameters"))?
        {
            let e = child.entry();
            if e.tag() == dw::DW_TAG_template_type_parameter
                && self.die_name(r.unit, e).as_deref() == Some(name)
            {
                return Ok(self.type_attr(r.unit, e));
            }
        }
        Ok(None)
    }

    /// Offset of `goid` in Go's `runtime.g`, for reading the goroutine id through R14.
    /// `None` for non-Go binaries or when the runtime's types are absent.
    #[must_use]
    pub fn go_goid_offset(&self) -> Option<u64> {
        *self.goid_offset.get_or_init(|| {
            for (ui, unit) in self.units.iter().enumerate() {
                let mut cursor = unit.entries();
                while let Ok(Some(e)) = cursor.next_dfs() {
                    if e.tag() == dw::DW_TAG_structure_type
                        && self.die_name(ui, e).as_deref() == Some("runtime.g")
                    {
                        let r = TypeRef {
                            unit: ui,
                            offset: e.offset().0,
                        };
                        return self
                            .members(r)
                            .ok()?
                            .into_iter()
                            .find(|m| m.name == "goid")
                            .map(|m| m.offset);
                    }
                }
            }
            None
        })
    }

    /// The `DW_TAG_variant_part` of a Rust enum, if `r` has one.
    fn variant_part(&self, r: TypeRef) -> Result<Option<VariantPart>, ResolveError> {
        let unit = &self.units[r.unit];
        let mut tree = unit
            .entries_tree(Some(gimli::UnitOffset(r.offset)))
            .map_err(self.dwarf_err("enum variants"))?;
        let root = tree.root().map_err(self.dwarf_err("enum variants"))?;
        let mut children = root.children();
        while let Some(child) = children.next().map_err(self.dwarf_err("enum variants"))? {
            if child.entry().tag() != dw::DW_TAG_variant_part {
                continue;
            }
            let discr = match child.entry().attr_value(dw::DW_AT_discr) {
                Some(gimli::AttributeValue::UnitRef(o)) => {
                    let d = unit
                        .entry(o)
                        .map_err(self.dwarf_err("an enum discriminant"))?;
                    let off = Self::udata(&d, dw::DW_AT_data_member_location).unwrap_or(0);
                    let size = self.size_of(self.type_attr(r.unit, &d))?.unwrap_or(8);
                    Some((off, size))
                }
                _ => None,
            };
            let mut variants = Vec::new();
            let mut vs = child.children();
            while let Some(v) = vs.next().map_err(self.dwarf_err("enum variants"))? {
                if v.entry().tag() != dw::DW_TAG_variant {
                    continue;
                }
                let discr_value =
                    v.entry()
                        .attr_value(dw::DW_AT_discr_value)
                        .and_then(|a| match a {
                            gimli::AttributeValue::Sdata(x) => Some(x as u64),
                            other => other.udata_value(),
                        });
                let mut ms = v.children();
                while let Some(m) = ms.next().map_err(self.dwarf_err("enum variants"))? {
                    let e = m.entry();
                    if e.tag() == dw::DW_TAG_member {
                        variants.push(Variant {
                            discr_value,
                            name: self.die_name(r.unit, e).unwrap_or_default(),
                            offset: Self::udata(e, dw::DW_AT_data_member_location).unwrap_or(0),
                            ty: self.type_attr(r.unit, e),
                        });
                    }
                }
            }
            return Ok(Some((discr, variants)));
        }
        Ok(None)
    }

    fn members(&self, r: TypeRef) -> Result<Vec<Member>, ResolveError> {
        let unit = &self.units[r.unit];
        let mut tree = unit
            .entries_tree(Some(gimli::UnitOffset(r.offset)))
            .map_err(self.dwarf_err("struct members"))?;
        let root = tree.root().map_err(self.dwarf_err("struct members"))?;
        let mut children = root.children();
        let mut out = Vec::new();
        while let Some(child) = children.next().map_err(self.dwarf_err("struct members"))? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_member && e.tag() != dw::DW_TAG_inheritance {
                continue;
            }
            let name = self.die_name(r.unit, e).unwrap_or_default();
            let offset = Self::udata(e, dw::DW_AT_data_member_location).unwrap_or(0);
            out.push(Member {
                name,
                offset,
                ty: self.type_attr(r.unit, e),
            });
        }
        Ok(out)
    }

    fn enumerators(&self, r: TypeRef) -> Result<(Vec<(String, i64)>, bool), ResolveError> {
        let unit = &self.units[r.unit];
        let mut tree = unit
            .entries_tree(Some(gimli::UnitOffset(r.offset)))
            .map_err(self.dwarf_err("enumerators"))?;
        let root = tree.root().map_err(self.dwarf_err("enumerators"))?;
        let mut children = root.children();
        let (mut out, mut negative) = (Vec::new(), false);
        while let Some(child) = children.next().map_err(self.dwarf_err("enumerators"))? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_enumerator {
                continue;
            }
            let name = self.die_name(r.unit, e).unwrap_or_default();
            let value = match e.attr_value(dw::DW_AT_const_value) {
                Some(gimli::AttributeValue::Sdata(v)) => v,
                Some(v) => v.udata_value().map_or(0, |u| u as i64),
                None => 0,
            };
            negative |= value < 0;
            out.push((name, value));
        }
        Ok((out, negative))
    }

    fn array_count(&self, r: TypeRef) -> Result<Option<u64>, ResolveError> {
        let unit = &self.units[r.unit];
        let mut tree = unit
            .entries_tree(Some(gimli::UnitOffset(r.offset)))
            .map_err(self.dwarf_err("array bounds"))?;
        let root = tree.root().map_err(self.dwarf_err("array bounds"))?;
        let mut children = root.children();
        while let Some(child) = children.next().map_err(self.dwarf_err("array bounds"))? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_subrange_type {
                continue;
            }
            if let Some(c) = Self::udata(e, dw::DW_AT_count) {
                return Ok(Some(c));
            }
            if let Some(ub) = Self::udata(e, dw::DW_AT_upper_bound) {
                let lb = Self::udata(e, dw::DW_AT_lower_bound).unwrap_or(0);
                return Ok(Some(ub + 1 - lb));
            }
            return Ok(None);
        }
        Ok(None)
    }
}
