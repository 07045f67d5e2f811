"""Run a firmware ELF in unicorn and charge every executed instruction its cycles.

The machine: the target's flash and RAM (``[memory]``), the ELF's loadable
segments at their load addresses, SP and PC from the vector table, and the
parts of the system control space the firmware touches (``port_cortexm.c``,
``startup_cortexm.c``): SysTick (CSR, RVR, CVR) and CPACR. Semihosting
(``bkpt 0xab``: SYS_WRITE0, SYS_EXIT) prints and stops.

Speed: a Python callback per instruction costs ~1 us; per translated block
(``UC_HOOK_BLOCK``) far less. Each block is decoded once and its static cost
precomputed (``table.insn_costs``); at run time only what depends on the path
is charged: the refill P of a taken branch (the next block does not start
where the last ended), flash wait states (``FlashModel``), and SysTick. A
block is charged whole on entry; a counter read inside it sees the cycles of
the instructions before it (a per-address prefix).

SysTick counts *cycles* of the model: the firmware's own ``VST ticks`` and
``VST marks`` lines become cycles per inference and per operator, parsed by
``toolchain.bench`` as QEMU's are. With ``profile`` each counter read also
snapshots the cycles so far by cause (``Machine.snapshot``; the block holding
the read counts whole, a few cycles off at each end). The wrap interrupt is modelled by its
effect (``vst_wraps`` += 1, found by symbol); its ~12 cycles are not charged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from toolchain.cycles.table import CoreTable, decode, insn_costs
from toolchain.errors import VstError

SCS_BASE, SCS_SIZE = 0xE000E000, 0x1000
SYST_CSR, SYST_RVR, SYST_CVR, CPACR = 0x010, 0x014, 0x018, 0xD88
SYS_WRITE0, SYS_EXIT, EXIT_OK = 0x04, 0x18, 0x20026
EXCP_BKPT, EXCP_SWI = 7, 2
PAGE = 0x1000
CPU_MODEL = {"cortex-m0": "M0", "cortex-m0plus": "M0", "cortex-m3": "M3", "cortex-m4": "M4",
             "cortex-m7": "M7", "cortex-m33": "M33"}


class FlashModel:
    """Flash wait states behind a prefetch buffer and an optional cache (ART).

    Sequential fetch is hidden by the prefetch buffer; a taken branch into
    flash fetches its target line, a data read from flash reads its line: each
    costs ``wait_states`` unless the line is in the instruction (resp. data)
    cache, an LRU of ``lines`` of ``line_bytes``.
    """

    def __init__(self, lo: int, hi: int, wait_states: int, line_bytes: int = 8,
                 icache_lines: int = 0, dcache_lines: int = 1):
        self.lo, self.hi, self.ws, self.shift = lo, hi, wait_states, line_bytes.bit_length() - 1
        self.caches = (OrderedDict(), OrderedDict())
        self.sizes = (icache_lines, dcache_lines)

    def _access(self, which: int, address: int) -> int:
        if not (self.ws and self.lo <= address < self.hi):
            return 0
        cache, line = self.caches[which], address >> self.shift
        if line in cache:
            cache.move_to_end(line)
            return 0
        if self.sizes[which]:
            cache[line] = None
            if len(cache) > self.sizes[which]:
                cache.popitem(last=False)
        return self.ws

    def fetch(self, address: int) -> int:
        return self._access(0, address)

    def read(self, address: int) -> int:
        return self._access(1, address)


@dataclass
class Block:
    cycles: float
    insns: int
    prefix: dict = field(default_factory=dict)   # address -> (cycles, insns) before it
    classes: dict = field(default_factory=dict)  # instruction class -> static cycles
    runs: int = 0


@dataclass
class Emulation:
    """What a run printed and what it cost."""

    text: str
    status: int
    cycles: int
    instructions: int
    seconds: float
    reads: list = field(default_factory=list)   # (cycles, instructions) at each SysTick CVR read
    # with ``profile``: at each CVR read, the cycles so far by cause (``Machine.snapshot``)
    snapshots: list = field(default_factory=list)


class Machine:
    def __init__(self, elf_path, memory: tuple[int, int, int, int], table: CoreTable,
                 flash: FlashModel, core: str, profile: bool = False):
        from unicorn import UC_ARCH_ARM, UC_MODE_MCLASS, UC_MODE_THUMB, Uc, arm_const

        self.table, self.flash = table, flash
        self.uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        self.uc.ctl_set_cpu_model(getattr(arm_const, f"UC_CPU_ARM_CORTEX_{CPU_MODEL[core]}"))
        self.a = arm_const
        flash_origin, flash_size, ram_origin, ram_size = memory
        for base, size in ((flash_origin, flash_size), (ram_origin, ram_size)):
            self.uc.mem_map(base, -(-size // PAGE) * PAGE)
        self.vector, self.wraps_addr = flash_origin, _load_elf(self.uc, elf_path)
        self.uc.mmio_map(SCS_BASE, SCS_SIZE, self._scs_read, None, self._scs_write, None)
        self.blocks: dict[tuple[int, int], Block] = {}
        self.cycles, self.insns, self.expect = 0.0, 0, -1
        self.block_start = (0.0, 0, None)
        self.out: list[str] = []
        self.status = None
        self.reads: list[tuple[int, int]] = []
        self.profile, self.snapshots = profile, []
        self.stalls = {"branch_refill": 0.0, "fetch_wait": 0.0, "data_wait": 0.0}
        self.syst = {SYST_CSR: 0, SYST_RVR: 0, "base": 0.0, "next_wrap": float("inf")}
        self.cpacr = 0

    # ---------------------------------------------------------------- costs

    def _block(self, address: int, size: int) -> Block:
        code = bytes(self.uc.mem_read(address, size))
        insns = decode(code, address)
        costs = insn_costs(insns, self.table)
        block, acc = Block(sum(costs), len(insns)), 0.0
        for k, (insn, cost) in enumerate(zip(insns, costs)):
            block.prefix[insn.address] = (acc, k)
            block.classes[insn.cls] = block.classes.get(insn.cls, 0.0) + cost
            acc += cost
        return block

    def snapshot(self) -> dict[str, float]:
        """Cycles so far by cause: each instruction class's static cycles (blocks
        entered so far, the current one whole), taken-branch refills, and flash
        wait states of branch-target fetches and of data reads."""
        out = dict(self.stalls)
        for block in self.blocks.values():
            if block.runs:
                for cls, cycles in block.classes.items():
                    out[cls] = out.get(cls, 0.0) + cycles * block.runs
        return out

    def _on_block(self, uc, address, size, _):
        key = (address, size)
        block = self.blocks.get(key)
        if block is None:
            block = self.blocks[key] = self._block(address, size)
        if address != self.expect and self.expect != -1:
            fetch = self.flash.fetch(address)
            self.cycles += self.table.branch_refill + fetch
            self.stalls["branch_refill"] += self.table.branch_refill
            self.stalls["fetch_wait"] += fetch
        self.expect = address + size
        block.runs += 1
        self.block_start = (self.cycles, self.insns, block)
        self.cycles += block.cycles
        self.insns += block.insns
        if self.cycles >= self.syst["next_wrap"]:
            self._wrap()

    def _on_flash_read(self, uc, access, address, size, value, _):
        wait = self.flash.read(address)
        self.cycles += wait
        self.stalls["data_wait"] += wait

    def _now(self) -> tuple[float, int]:
        """(cycles, instructions) before the instruction at PC, mid-block."""
        cycles, insns, block = self.block_start
        pc = self.uc.reg_read(self.a.UC_ARM_REG_PC)
        before = block.prefix.get(pc) if block else None
        if before is None:
            return self.cycles, self.insns
        return cycles + before[0], insns + before[1]

    # -------------------------------------------------------------- SysTick

    def _cvr(self) -> int:
        syst = self.syst
        if not syst[SYST_CSR] & 1:
            return 0
        elapsed = int(self._now()[0] - syst["base"])
        if elapsed <= 0:
            return 0
        period = syst[SYST_RVR] + 1
        return syst[SYST_RVR] - (elapsed - 1) % period

    def _wrap(self) -> None:
        syst = self.syst
        syst["next_wrap"] += syst[SYST_RVR] + 1
        if syst[SYST_CSR] & 2 and self.wraps_addr is not None:
            raw = self.uc.mem_read(self.wraps_addr, 4)
            value = (int.from_bytes(raw, "little") + 1) & 0xFFFFFFFF
            self.uc.mem_write(self.wraps_addr, value.to_bytes(4, "little"))

    def _scs_read(self, uc, offset, size, _):
        if offset == SYST_CVR:
            now = self._now()
            self.reads.append((int(now[0]), now[1]))
            if self.profile:
                self.snapshots.append(self.snapshot())
            return self._cvr()
        if offset in (SYST_CSR, SYST_RVR):
            return self.syst[offset]
        return self.cpacr if offset == CPACR else 0

    def _scs_write(self, uc, offset, size, value, _):
        syst = self.syst
        if offset == SYST_CVR:
            syst["base"] = self._now()[0]
        elif offset == SYST_RVR:
            syst[SYST_RVR] = value & 0xFFFFFF
        elif offset == SYST_CSR:
            syst[SYST_CSR] = value
        elif offset == CPACR:
            self.cpacr = value
        if offset in (SYST_CVR, SYST_RVR, SYST_CSR):
            period = syst[SYST_RVR] + 1
            syst["next_wrap"] = (syst["base"] + 1 + period if syst[SYST_CSR] & 1
                                 else float("inf"))

    # ---------------------------------------------------------- semihosting

    def _on_interrupt(self, uc, intno, _):
        a = self.a
        pc = uc.reg_read(a.UC_ARM_REG_PC)
        if intno != EXCP_BKPT or bytes(uc.mem_read(pc, 2)) != b"\xab\xbe":
            self.status = 3
            self.out.append(f"VST error 0 exception {intno} at {pc:#x}\n")
            uc.emu_stop()
            return
        op, arg = uc.reg_read(a.UC_ARM_REG_R0), uc.reg_read(a.UC_ARM_REG_R1)
        if op == SYS_WRITE0:
            self.out.append(_c_string(uc, arg))
        elif op == SYS_EXIT:
            self.status = 0 if arg == EXIT_OK else 1
            uc.emu_stop()
            return
        else:
            self.out.append(f"VST error 0 semihosting call {op:#x}\n")
        uc.reg_write(a.UC_ARM_REG_PC, (pc + 2) | 1)

    # ------------------------------------------------------------------ run

    def run(self, max_instructions: int) -> Emulation:
        from unicorn import UC_HOOK_BLOCK, UC_HOOK_INTR, UC_HOOK_MEM_READ, UcError

        uc, a = self.uc, self.a
        sp = int.from_bytes(uc.mem_read(self.vector, 4), "little")
        pc = int.from_bytes(uc.mem_read(self.vector + 4, 4), "little")
        uc.reg_write(a.UC_ARM_REG_SP, sp)
        uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        if self.flash.ws:
            uc.hook_add(UC_HOOK_MEM_READ, self._on_flash_read, begin=self.flash.lo,
                        end=self.flash.hi - 1)
        start = time.perf_counter()
        while self.status is None:
            try:
                uc.emu_start(pc | 1, 0xFFFFFFFF, count=0)
            except UcError as exc:
                here = uc.reg_read(a.UC_ARM_REG_PC)
                raise VstError(f"cycle model: firmware stopped at {here:#x}: {exc}") from None
            if self.status is None:
                # returned without SYS_EXIT: resume where it stopped (emu_stop from a callback)
                pc = uc.reg_read(a.UC_ARM_REG_PC)
            if self.insns > max_instructions:
                raise VstError(f"cycle model: firmware ran past {max_instructions:,} "
                               "instructions without exiting")
        return Emulation(text="".join(self.out), status=self.status, cycles=round(self.cycles),
                         instructions=self.insns, seconds=time.perf_counter() - start,
                         reads=self.reads, snapshots=self.snapshots)


def _c_string(uc, address: int, limit: int = 4096) -> str:
    out = bytearray()
    while len(out) < limit:
        chunk = bytes(uc.mem_read(address + len(out), 64))
        end = chunk.find(b"\0")
        if end >= 0:
            out += chunk[:end]
            break
        out += chunk
    return out.decode("latin-1")


def _load_elf(uc, path) -> int | None:
    """Copy the loadable segments to their load addresses; the address of
    ``vst_wraps`` (the SysTick wrap count) or None."""
    from elftools.elf.elffile import ELFFile
    from elftools.common.exceptions import ELFError

    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    uc.mem_write(seg["p_paddr"], seg.data())
            symtab = elf.get_section_by_name(".symtab")
            syms = symtab.get_symbol_by_name("vst_wraps") if symtab else None
            return syms[0]["st_value"] if syms else None
    except (OSError, ELFError) as exc:
        raise VstError(f"cycle model: cannot read {path}: {exc}") from None
