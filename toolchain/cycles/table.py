"""Per-core cycle tables (``toolchain/cycles/<core>.toml``) and the static cost of a block.

Instructions are decoded with capstone (Thumb-2, M-class): writing a Thumb-2
decoder by hand for the ~200 encodings GCC emits (IT blocks, wide/narrow
forms, VFP, DSP) would be a second, untested decoder; capstone gives the
instruction id, its register reads and writes and its memory operands, which
is all the table needs. Each instruction falls into one class (``CLASSES``);
the core's TOML gives the cycles of each class. What depends on the run
(taken branches, flash wait states) is charged by ``emulate.py``; what
depends only on neighbours in the block (load/store pipelining, M7 dual issue)
is charged here, once per translated block.

>>> table = load_table("cortex-m4")
>>> table.cost["load"], table.branch_refill
(2, 2)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from toolchain.errors import VstError

HERE = Path(__file__).resolve().parent

# class -> capstone instruction names (ARM_INS_<NAME>); anything else is "alu".
CLASSES: dict[str, tuple[str, ...]] = {
    "load": ("LDR", "LDRB", "LDRH", "LDRSB", "LDRSH", "LDRT", "LDRBT", "LDRHT", "LDRSBT",
             "LDRSHT", "LDREX", "LDREXB", "LDREXH", "LDA", "LDAB", "LDAH"),
    "store": ("STR", "STRB", "STRH", "STRT", "STRBT", "STRHT", "STREX", "STREXB", "STREXH",
              "STL", "STLB", "STLH"),
    "load_double": ("LDRD",),
    "store_double": ("STRD",),
    "multiple": ("LDM", "LDMDB", "STM", "STMDB", "PUSH", "POP"),
    "branch": ("B", "BL", "BX", "BLX", "CBZ", "CBNZ"),
    "table_branch": ("TBB", "TBH"),
    "it": ("IT",),
    "mul": ("MUL",),
    "mla": ("MLA", "MLS"),
    "long_mul": ("UMULL", "SMULL", "UMLAL", "SMLAL", "UMAAL"),
    "dsp_mul": ("SMLAD", "SMLADX", "SMLSD", "SMLSDX", "SMUAD", "SMUADX", "SMUSD", "SMUSDX",
                "SMLABB", "SMLABT", "SMLATB", "SMLATT", "SMLAWB", "SMLAWT", "SMULBB",
                "SMULBT", "SMULTB", "SMULTT", "SMULWB", "SMULWT", "SMMUL", "SMMULR", "SMMLA",
                "SMMLAR", "SMMLS", "SMMLSR", "SMLALD", "SMLALDX", "SMLSLD", "SMLSLDX",
                "SMLALBB", "SMLALBT", "SMLALTB", "SMLALTT", "USADA8"),
    "div": ("UDIV", "SDIV"),
    "fp_mac": ("VMLA", "VMLS", "VNMLA", "VNMLS", "VFMA", "VFMS", "VFNMA", "VFNMS"),
    "fp_div": ("VDIV", "VSQRT"),
    "fp_load": ("VLDR",),
    "fp_store": ("VSTR",),
    "fp_multiple": ("VLDMIA", "VLDMDB", "VSTMIA", "VSTMDB", "VPUSH", "VPOP"),
}
FP_PREFIX = "V"            # other V* instructions: fp_alu
REQUIRED = ("alu", "load", "store", "multiple", "branch", "mul")
MEMORY = frozenset(("load", "store"))


@dataclass(frozen=True)
class CoreTable:
    core: str
    source: str
    branch_refill: int
    load_pipelining: bool
    dual_issue: bool
    cost: dict[str, int]

    def of(self, cls: str) -> int:
        """Cycles of one instruction of ``cls`` (an absent class costs as its nearest)."""
        if cls in self.cost:
            return self.cost[cls]
        fallback = {"it": "alu", "load_double": "load", "store_double": "store",
                    "table_branch": "load", "mla": "mul", "long_mul": "mul", "dsp_mul": "mul",
                    "div": "mul", "fp_mac": "alu", "fp_div": "alu", "fp_alu": "alu",
                    "fp_load": "load", "fp_store": "store", "fp_multiple": "multiple"}
        return self.cost[fallback[cls]]


def _bad(core: str, what: str) -> VstError:
    return VstError(f"cycle table {core}: {what}")


@lru_cache(maxsize=None)
def load_table(core: str) -> CoreTable:
    """The cycle table of a core (``cortex-m4``); VstError if unknown or malformed."""
    path = HERE / f"{core}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in HERE.glob("*.toml"))
        raise VstError(f"no cycle table for core {core!r}; known: {', '.join(known)}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    cost = data.get("cycles", {})
    for key in REQUIRED:
        if key not in cost:
            raise _bad(core, f"missing [cycles] {key}")
    for key, value in cost.items():
        if key not in CLASSES and key not in ("alu", "fp_alu"):
            raise _bad(core, f"unknown instruction class {key!r}")
        if not isinstance(value, int) or not 0 < value <= 64:
            raise _bad(core, f"{key} must be a cycle count in 1..64, got {value!r}")
    refill = data.get("branch_refill")
    if not isinstance(refill, int) or not 0 <= refill <= 8:
        raise _bad(core, f"branch_refill must be 0..8, got {refill!r}")
    return CoreTable(core=data.get("core", core), source=data.get("source", ""),
                     branch_refill=refill, load_pipelining=bool(data.get("load_pipelining")),
                     dual_issue=bool(data.get("dual_issue")), cost=dict(cost))


@lru_cache(maxsize=1)
def _class_of_id() -> dict[int, str]:
    from capstone import arm_const

    by_name = {name: cls for cls, names in CLASSES.items() for name in names}
    out = {}
    for attr in dir(arm_const):
        if attr.startswith("ARM_INS_"):
            name = attr[len("ARM_INS_"):]
            out[getattr(arm_const, attr)] = by_name.get(
                name, "fp_alu" if name.startswith(FP_PREFIX) else "alu")
    return out


@lru_cache(maxsize=1)
def disassembler():
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_ARM,
                     capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS | capstone.CS_MODE_V8)
    md.detail = True
    return md


@dataclass(frozen=True)
class Insn:
    """What the cost rules need of one decoded instruction."""

    address: int
    size: int
    cls: str
    reads: frozenset
    writes: frozenset
    address_regs: frozenset   # base and index of a memory operand
    count: int                # registers moved by LDM/STM/VLDM (words), else 0


def decode(code: bytes, address: int) -> list[Insn]:
    """Decode a block of Thumb code; VstError on bytes capstone cannot read."""
    from capstone import CS_OP_MEM, CS_OP_REG
    from capstone.arm_const import ARM_REG_D0, ARM_REG_D31

    classes, out = _class_of_id(), []
    for ins in disassembler().disasm(code, address):
        cls = classes.get(ins.id, "alu")
        reads, writes = ins.regs_access()
        addr_regs, count = set(), 0
        for op in ins.operands:
            if op.type == CS_OP_MEM:
                addr_regs.update(r for r in (op.mem.base, op.mem.index) if r)
            elif op.type == CS_OP_REG and cls in ("multiple", "fp_multiple"):
                count += 2 if ARM_REG_D0 <= op.reg <= ARM_REG_D31 else 1
        if cls in ("multiple", "fp_multiple") and ins.id not in _PUSH_POP():
            count -= 1                          # the base register operand
        out.append(Insn(ins.address, ins.size, cls, frozenset(reads), frozenset(writes),
                        frozenset(addr_regs), count))
    if sum(i.size for i in out) != len(code):
        raise VstError(f"cycle model: cannot decode the instruction at {address + sum(i.size for i in out):#x}")
    return out


@lru_cache(maxsize=1)
def _PUSH_POP() -> frozenset:
    from capstone import arm_const as a
    return frozenset((a.ARM_INS_PUSH, a.ARM_INS_POP, a.ARM_INS_VPUSH, a.ARM_INS_VPOP))


def _single_memory(insn: Insn) -> bool:
    return insn.cls in ("load", "store", "fp_load", "fp_store")


def insn_costs(insns: list[Insn], table: CoreTable) -> list[float]:
    """Static cycles of each instruction of a block (taken-branch refill and
    wait states excluded: they depend on the run)."""
    costs = []
    for k, insn in enumerate(insns):
        base = table.of(insn.cls)
        if insn.cls in ("multiple", "fp_multiple"):
            base += insn.count
        nxt = insns[k + 1] if k + 1 < len(insns) else None
        if (table.load_pipelining and insn.cls in ("load", "fp_load") and nxt is not None
                and _single_memory(nxt) and not (insn.writes & nxt.address_regs)):
            base -= 1                           # address phase of the next overlaps
        costs.append(float(base))
    if table.dual_issue:
        _pair(insns, costs, table)
    return costs


PAIRABLE = frozenset(("alu", "load", "store", "mul", "dsp_mul", "mla", "fp_alu", "fp_load",
                      "fp_store"))
_MULS = frozenset(("mul", "dsp_mul", "mla"))


def _pair(insns: list[Insn], costs: list[float], table: CoreTable) -> None:
    """M7 dual issue, greedily in order: an adjacent pair of pairable single-cycle
    instructions, at most one memory access and one multiply, the second not
    reading what the first writes, costs the cycles of one (split half each)."""
    k = 0
    while k + 1 < len(insns):
        a, b = insns[k], insns[k + 1]
        ok = (a.cls in PAIRABLE and b.cls in PAIRABLE and costs[k] == costs[k + 1] == 1
              and not (a.cls in MEMORY | {"fp_load", "fp_store"}
                       and b.cls in MEMORY | {"fp_load", "fp_store"})
              and not (a.cls in _MULS and b.cls in _MULS)
              and not (a.writes & (b.reads | b.address_regs)) and not (a.writes & b.writes))
        if ok:
            costs[k] = costs[k + 1] = 0.5
            k += 2
        else:
            k += 1
