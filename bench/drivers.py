"""PostgreSQL drivers: asyncpg against psycopg 3, on the statements the store makes most.

The store's calls are many small statements (app/store/sql.py): a post is a write transaction
of about eight, a feed read a snapshot of three or four. Each driver runs the same three
shapes on one connection, alternating, on a fresh table:

- a write transaction as the store makes one: BEGIN, the advisory write lock, an INSERT ...
  RETURNING, an UPDATE, COMMIT;
- a keyed SELECT of one row;
- a SELECT of 100 rows.

Printed per driver and shape: operations a second and this process's CPU per operation (the
database's own CPU is not counted: it is the same for both). psycopg 3 is installed only to be
measured here (``pip install 'psycopg[binary]'``); the run says so if it is missing.

    .venv/bin/python -m bench.drivers [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                      [--ops 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

TABLE = "bench_drivers"
LOCK = 0x6265_6E63
SHAPES = ("write transaction", "select one row", "select 100 rows")


async def asyncpg_ops(url: str) -> tuple[Callable[[], Awaitable[None]], ...]:
    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await conn.execute(f"CREATE TABLE {TABLE} (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
    await conn.executemany(f"INSERT INTO {TABLE} (body) VALUES ($1)", [("x" * 500,)] * 1000)

    async def write() -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
            row = await conn.fetchval(
                f"INSERT INTO {TABLE} (body) VALUES ($1) RETURNING id", "y" * 500
            )
            await conn.execute(f"UPDATE {TABLE} SET body = $1 WHERE id = $2", "z" * 500, row)

    async def one() -> None:
        await conn.fetchrow(f"SELECT id, body FROM {TABLE} WHERE id = $1", 500)

    async def hundred() -> None:
        await conn.fetch(f"SELECT id, body FROM {TABLE} WHERE id > $1 ORDER BY id LIMIT 100", 100)

    return write, one, hundred


async def psycopg_ops(url: str) -> tuple[Callable[[], Awaitable[None]], ...]:
    import psycopg  # type: ignore[import-not-found,unused-ignore]

    conn: Any = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await conn.execute(f"CREATE TABLE {TABLE} (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
    async with conn.cursor() as cur:
        await cur.executemany(f"INSERT INTO {TABLE} (body) VALUES (%s)", [("x" * 500,)] * 1000)

    async def write() -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
            cur = await conn.execute(
                f"INSERT INTO {TABLE} (body) VALUES (%s) RETURNING id", ("y" * 500,)
            )
            (row,) = await cur.fetchone()
            await conn.execute(f"UPDATE {TABLE} SET body = %s WHERE id = %s", ("z" * 500, row))

    async def one() -> None:
        cur = await conn.execute(f"SELECT id, body FROM {TABLE} WHERE id = %s", (500,))
        await cur.fetchone()

    async def hundred() -> None:
        cur = await conn.execute(
            f"SELECT id, body FROM {TABLE} WHERE id > %s ORDER BY id LIMIT 100", (100,)
        )
        await cur.fetchall()

    return write, one, hundred


async def measure(op: Callable[[], Awaitable[None]], ops: int) -> tuple[float, float]:
    """Operations a second, and microseconds of this process's CPU per operation."""
    for _ in range(50):  # warm: prepared statements, caches
        await op()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(ops):
        await op()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return ops / wall, cpu / ops * 1e6


async def run(url: str, ops: int, rounds: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    drivers: dict[str, Callable[[str], Awaitable[tuple[Callable[[], Awaitable[None]], ...]]]] = {
        "asyncpg": asyncpg_ops
    }
    if importlib.util.find_spec("psycopg") is not None:
        drivers["psycopg 3"] = psycopg_ops
    else:
        print("psycopg 3 is not installed: pip install 'psycopg[binary]' to compare")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {shape: [] for shape in SHAPES} for name in drivers
    }
    for number in range(rounds):
        for name, make in drivers.items():  # alternating, so that drift hits both alike
            shapes = await make(url)
            for shape, op in zip(SHAPES, shapes, strict=True):
                results[name][shape].append(await measure(op, ops))
        print(f"round {number + 1}/{rounds} done", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.url, args.ops, args.rounds))
    print(f"{'driver':<10} {'shape':<18} {'ops/s (best)':>12} {'CPU us/op (best)':>17}")
    for name, shapes in results.items():
        for shape, samples in shapes.items():
            rate = max(s[0] for s in samples)
            cpu = min(s[1] for s in samples)
            print(f"{name:<10} {shape:<18} {rate:>12.0f} {cpu:>17.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
