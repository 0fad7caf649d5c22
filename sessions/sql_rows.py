"""Hand-written statements for the command path, each worked out once per model and database.

The ORM compiles a statement again on every call: one ``objects.create()`` was about 400 Python
calls, most of the web's database work for a command (tests/bench/command_cost.py). What is
written here is the statement the ORM would send, with its values prepared by the model's own
fields (``get_db_prep_save``), so the rows are the same.
"""

from __future__ import annotations

import functools

from django.db import connection
from django.db.models import AutoField, BigAutoField, Model, SmallAutoField
from django.utils import timezone

_AUTO = (AutoField, BigAutoField, SmallAutoField)


@functools.cache
def sql_names(model: type[Model], vendor: str) -> dict[str, str]:
    """A model's quoted table ("table"), primary key column ("pk") and field columns (by field name)."""
    meta, qn = model._meta, connection.ops.quote_name
    return {**{f.name: qn(f.column) for f in meta.concrete_fields}, "table": qn(meta.db_table), "pk": qn(meta.pk.column)}


@functools.cache
def _insert_plan(model: type[Model], vendor: str, with_pk: bool) -> tuple[str, list, bool]:
    """(INSERT of every concrete field, the pk left to the database unless ``with_pk``; per concrete
    field: (field, inserted?, a constant default and its prepared value, or None); whether the new pk
    comes back with RETURNING). A default that is neither callable nor ``auto_now`` is prepared once."""
    meta, q = model._meta, sql_names(model, vendor)
    inserted = [f for f in meta.concrete_fields if with_pk or not (f.primary_key and isinstance(f, _AUTO))]
    sql = (f"INSERT INTO {q['table']} ({', '.join(q[f.name] for f in inserted)}) "
           f"VALUES ({', '.join(['%s'] * len(inserted))})")
    returning = not with_pk and connection.features.can_return_columns_from_insert
    if returning:
        sql += f" RETURNING {q['pk']}"
    plan = []
    for f in meta.concrete_fields:
        dynamic = callable(f.default) or getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False)
        const = None if dynamic else (f.get_default(), f.get_db_prep_save(f.get_default(), connection))
        plan.append((f, f in inserted, const))
    return sql, plan, returning


def row_insert(model: type[Model], **values) -> Model:
    """Insert one row, as ``model.objects.create(**values)`` would (no signals are sent, none is
    connected to these models): a field not given takes its default, ``auto_now(_add)`` the time now.
    ``values`` by field name (a foreign key's ``<name>_id`` too). Returns the instance."""
    meta = model._meta
    pk_given = meta.pk.name in values or meta.pk.attname in values or not isinstance(meta.pk, _AUTO)
    sql, plan, returning = _insert_plan(model, connection.vendor, pk_given)
    now = None
    row, params = [], []
    for f, inserted, const in plan:
        if f.name in values or f.attname in values:
            v = values[f.name] if f.name in values else values[f.attname]
            if f.is_relation and isinstance(v, Model):
                v = v.pk
        elif const is not None:
            row.append(const[0])
            if inserted:
                params.append(const[1])
            continue
        elif getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False):
            v = now = now or timezone.now()
        else:
            v = f.get_default()
        row.append(v)
        if inserted:
            params.append(f.get_db_prep_save(v, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            row[meta.concrete_fields.index(meta.pk)] = cursor.fetchone()[0]
    obj = model(*row)  # positional: the fast way in
    obj._state.adding, obj._state.db = False, connection.alias
    return obj
