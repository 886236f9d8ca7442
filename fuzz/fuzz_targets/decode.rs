//! Event records → values: decoders planned from the real DWARF of the `orders` fixture (every
//! expression alone, all together with the locals and the stack, and a condition), fed mutated
//! records, decoded and rendered every way (lldb, Delve, JSON), the stack unwound with CFI.
//! The input: one byte choosing the plan, one of flags, then the record.
#![no_main]

use std::sync::{Arc, OnceLock};

use detrix_agent::addr::RuntimeAddr;
use detrix_agent::debuginfo::{Binary, Symbolizer, UnwindRegs};
use detrix_agent::plan::{self, BuiltPlan, Extras, PlanOptions, Role};
use detrix_agent::{decode, expr, probe, render};
use detrix_common::{PLAN_ABI, WIRE_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    plans: Vec<BuiltPlan>,
    sym: Symbolizer,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (path, _) = detrix_fuzz::orders_binary();
        let bin = Arc::new(Binary::open(&path).expect("the orders fixture parses"));
        let opts = PlanOptions {
            tgid: 1,
            load_bias: 0,
            string_cap: 64,
            elem_cap: plan::DEFAULT_ELEM_CAP,
            rate_per_sec: 0,
            burst: 0,
        };
        let cond = expr::parse_condition("o->qty > 3").ok();
        let mut plans = Vec::new();
        for line in detrix_fuzz::orders_probe_lines() {
            for point in bin.resolve_line("orders.c", line).unwrap_or_default() {
                let mut ok = Vec::new();
                for e in detrix_fuzz::ORDERS_EXPRS {
                    let one = [(*e).to_owned()];
                    if let Ok(p) = plan::build(&bin, &point, &one, None, opts) {
                        plans.push(p);
                        ok.push(one[0].clone());
                    }
                }
                ok.truncate(8);
                let extras = Extras {
                    locals: bin.locals_in_scope(&point).unwrap_or_default(),
                    stack: true,
                };
                if let Ok(p) = plan::build_with(
                    &bin,
                    &point,
                    &ok,
                    cond.as_ref(),
                    &extras,
                    opts,
                    plan::Reads::Coalesced,
                ) {
                    plans.push(p);
                }
            }
        }
        assert!(
            plans.len() >= 10,
            "only {} plans built from the fixture",
            plans.len()
        );
        Fixture {
            plans,
            sym: Symbolizer::new(bin, 0, Vec::new(), 0),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let [sel, flags, record @ ..] = data else {
        return;
    };
    let built = &f.plans[usize::from(*sel) % f.plans.len()];
    let mut record = record.to_vec();
    if record.len() >= WIRE_HEADER_BYTES {
        // The ABI check is one compare; past it is what is worth fuzzing.
        record[..4].copy_from_slice(&PLAN_ABI.to_le_bytes());
        if flags & 1 != 0 {
            let n = u32::try_from(built.values.len()).unwrap_or(0);
            record[36..40].copy_from_slice(&n.to_le_bytes());
        }
    }
    let Some((h, body)) = probe::parse_record(&record) else {
        return;
    };
    let nodes = decode::decode(&built.values, &h, body);
    assert_eq!(nodes.len(), built.values.len());
    for n in &nodes {
        let _ = render::debugger(n);
        let _ = render::lldb::text(n);
        let _ = render::delve::text(n, flags & 2 != 0);
        let _ = render::json::value(n);
    }
    for (i, d) in built.values.iter().enumerate() {
        let bytes = plan::value_bytes(&built.values, i, &h, body);
        match d.role {
            Role::Stack => {
                let pcs: Vec<RuntimeAddr> = bytes
                    .chunks_exact(8)
                    .map(|c| RuntimeAddr(u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
                    .collect();
                let _ = f.sym.return_addresses(pcs.into_iter());
            }
            Role::UnwindRegs if bytes.len() >= 24 => {
                let at =
                    |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
                let (pc, sp, bp) = (at(0), at(8), at(16));
                let stack = body.to_vec();
                let read = |addr: u64| -> Option<u64> {
                    let off = usize::try_from(addr.checked_sub(sp)?).ok()?;
                    stack
                        .get(off..off.checked_add(8)?)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                };
                let frames = f.sym.unwind(
                    UnwindRegs {
                        pc: RuntimeAddr(pc),
                        sp,
                        bp,
                    },
                    &read,
                );
                assert!(
                    frames.len() <= plan::STACK_FRAMES + 1,
                    "{} frames",
                    frames.len()
                );
            }
            _ => {}
        }
    }
});
