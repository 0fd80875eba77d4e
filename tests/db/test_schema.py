"""The models match the real vcl.sql schema (MariaDB loaded with vcl.sql, reflected)."""

from __future__ import annotations

from sqlalchemy import Engine, Enum, MetaData, String

from worker.db.models import Base


def test_every_mapped_column_exists_with_compatible_type(engine: Engine) -> None:
    real = MetaData()
    real.reflect(bind=engine)
    problems: list[str] = []
    for table in Base.metadata.sorted_tables:
        if table.name not in real.tables:
            problems.append(f"table {table.name} missing")
            continue
        rt = real.tables[table.name]
        for col in table.columns:
            where = f"{table.name}.{col.name}"
            if col.name not in rt.columns:
                problems.append(f"{where} missing")
                continue
            rcol = rt.columns[col.name]
            mapped_py = col.type.python_type
            real_py = rcol.type.python_type
            if mapped_py is not real_py:
                problems.append(
                    f"{where}: mapped {mapped_py.__name__}, real {real_py.__name__} ({rcol.type})"
                )
            if col.nullable != rcol.nullable:
                problems.append(f"{where}: mapped nullable={col.nullable}, real nullable={rcol.nullable}")
            if col.primary_key != rcol.primary_key:
                problems.append(f"{where}: primary key mismatch")
            if isinstance(col.type, Enum):
                if set(col.type.enums) != set(getattr(rcol.type, "enums", ())):
                    problems.append(f"{where}: enum {col.type.enums} != {getattr(rcol.type, 'enums', None)}")
            elif isinstance(col.type, String) and col.type.length is not None:
                real_len = getattr(rcol.type, "length", None)
                if real_len is None or col.type.length > real_len:
                    problems.append(f"{where}: mapped length {col.type.length} > real {real_len}")
    assert problems == []


def test_mapped_tables_cover_the_flows() -> None:
    expected = {
        "state", "request", "reservation", "computer", "computerloadlog", "computerloadstate", "image",
        "imagerevision", "imagetype", "OS", "OStype", "module", "provisioning", "vmhost", "vmprofile",
        "managementnode", "user", "platform", "log", "variable", "vcldsemaphore", "changelog",
        "serverrequest", "resource", "resourcetype", "affiliation", "OSinstalltype",
    }  # fmt: skip
    assert expected <= set(Base.metadata.tables)
