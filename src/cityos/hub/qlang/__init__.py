"""The NGSI-LD query language (`q`, ETSI GS CIM 009 v1.8.1 §4.9): parser, evaluator and SQL translation.

    q=temperature>20;(status=="ok"|status=="degraded");address[city]=="Berlin"

Terms are joined with `;` (AND) and `|` (OR); AND binds tighter than OR; parentheses group. A term
is an attribute path alone (the attribute exists) or `path op value`:

- path: `attr`, `attr.sub.sub` (sub-attributes; `observedAt`, `modifiedAt`, `createdAt`, `unitCode`
  and `datasetId` address the reserved members), then optionally `[key][key]` into a structured
  value. Names are written as short names; the caller's `expand` maps them to IRIs.
- ops: `==` `!=` `>` `>=` `<` `<=` `~=` (regular expression) `!~=`.
- values: numbers, "quoted strings" (`\\"` and `\\\\` escape), `true`/`false`, unquoted DateTime,
  Date and Time literals, unquoted URIs, ranges `low..high` and lists `a,b,c` (ranges and lists only
  with `==` / `!=`).

What is compared (in the internal form of `cityos.hub.model`, first instance of the attribute):
Property/GeoProperty "value", Relationship "object", VocabProperty "vocab", ListProperty "valueList",
ListRelationship "objectList", JsonProperty "json", LanguageProperty the values of "languageMap"
(with a `[key]` path, the languageMap member instead). When the compared value is an array, the term
matches when any element matches. Comparisons are typed: a number only compares with JSON numbers,
a string (and DateTime/Date/Time/URI literals) only with strings, a boolean only with booleans; a type
mismatch is false. `!=`, `!~=` and "outside a range"/"not in a list" need at least one comparable
value and match when none of the comparable values equals/matches. DateTime literals are normalised
to the stored `YYYY-MM-DDTHH:MM:SS.mmmZ` form so that string order is time order.

Regular expressions are a portable subset of POSIX ARE and Python syntax, validated at parse time:
literals, `.`, `[...]` classes, `\\d \\s \\w` (ASCII classes) and their negations, `^`, `$`, groups,
`|`, greedy and lazy quantifiers, a leading `(?i)`. `.` also matches a newline and `$` only matches at
the very end, as with PostgreSQL's `~`. The evaluator and SQLite use a built-in linear-time matcher
(no backtracking, so no catastrophic patterns; Python's `re` needs seconds for `.*a.*b` on 4 KB);
PostgreSQL uses `~`, with the class escapes spelled out so that no locale changes their meaning.
Strings longer than REGEX_MAX_SUBJECT characters take no part in `~=` / `!~=`, on every backend.

`q_to_sql` turns the same tree into a SQLAlchemy Core condition over the JSON `attrs` column, with
every user value and every JSON key in a bound parameter. `evaluate_q` and the SQL agree exactly
(the tests check this on SQLite and PostgreSQL with generated expressions and entities). One limit:
an expanded name containing `"` (never a legal IRI) matches nothing, as SQLite's JSON paths cannot
address such a key.

The package, by responsibility:

- `tree`: the expression tree (`QExpr` and its nodes, `AttrPath`, the value classes);
- `regex`: the portable regular-expression subset, its linear-time matcher and the SQLite function;
- `parse`: `parse_q`, text to tree;
- `semantics`: what the evaluator and the SQL share: where a path points, the per-value predicates;
- `evaluate`: `evaluate_q`, against one entity in Python (notifications, registrations);
- `sql`: `q_to_sql`, the SQLite and PostgreSQL translations.

Everything callers use is re-exported here: import from `cityos.hub.qlang`.
"""

from cityos.hub.qlang.evaluate import evaluate_q
from cityos.hub.qlang.parse import parse_q
from cityos.hub.qlang.regex import _sqlite_regexp as _sqlite_regexp  # for the tests of the SQLite function
from cityos.hub.qlang.regex import pg_pattern, python_pattern, regex_search
from cityos.hub.qlang.semantics import q_attribute_names, q_paths
from cityos.hub.qlang.sql import q_to_sql
from cityos.hub.qlang.tree import (
    RESERVED_SUB_ATTRIBUTES,
    And,
    AttrPath,
    Comparison,
    Exists,
    Or,
    Pattern,
    QExpr,
    Range,
    Scalar,
    ValueList,
)

__all__ = [
    "RESERVED_SUB_ATTRIBUTES",
    "And",
    "AttrPath",
    "Comparison",
    "Exists",
    "Or",
    "Pattern",
    "QExpr",
    "Range",
    "Scalar",
    "ValueList",
    "evaluate_q",
    "parse_q",
    "pg_pattern",
    "python_pattern",
    "q_attribute_names",
    "q_paths",
    "q_to_sql",
    "regex_search",
]
