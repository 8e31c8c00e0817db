"""Result files name the machine they ran on, with the vector arithmetic that sets its speed."""

from spottune.ml.machine import cpu_flags, machine_id, vector_isa


def test_vector_isa_is_the_widest_the_cpu_has() -> None:
    assert vector_isa({"sse2", "avx2"}) == "avx2"
    assert vector_isa({"avx2", "avx512f", "avx512_bf16"}) == "avx512"
    assert vector_isa({"avx2", "avx512f", "amx_tile", "amx_bf16"}) == "amx"
    assert vector_isa({"sse2"}) is None


def test_machine_id_tells_an_avx2_machine_from_an_avx512_one() -> None:
    name = machine_id()
    isa = vector_isa(cpu_flags())
    assert name.startswith("cpu-")
    assert name.endswith(f"-{isa}") if isa else not name.endswith(("-avx2", "-avx512", "-amx"))
