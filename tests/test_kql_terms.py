"""Kusto string and term operators (detector/kql_terms.py): the documented cases, then properties.

Sources cited per case: "docs" is MicrosoftDocs/dataexplorer-docs data-explorer/kusto/query/
(datatypes-string-operators.md, has-anyoperator.md, string-size-function.md, ipv4-is-private-function.md);
"measured" is duckdb-kql's term rules, measured on Microsoft's Kusto Emulator (duckdb_kql/translate/
functions.py `term_match_sql`); "finops" is microsoft/finops-toolkit#2220 (has "/providers/" and
contains "/providers/" gave identical counts on a 36.5M-row production table).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb_kql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.kql_terms import (
    contains,
    fold,
    has,
    has_any,
    hasprefix,
    in_ci,
    ipv4_is_private,
    is_term_char,
    matches_regex,
    max_datetime,
    min_datetime,
    not_has,
    not_in_ci,
    not_startswith,
    startswith,
    string_size,
)

# The two patterns of rule 968358d6 (ProxyShell), as the KQL verbatim strings @"..." spell them.
PROXYSHELL_DOMAIN = r"\.[a-zA-Z]{2,4}?(?:[a-zA-Z]{2,4}\/)"
PROXYSHELL_PORT = r"\:[0-9]{2,4}\/"


@pytest.mark.parametrize(
    ("source", "needle", "expected"),
    [
        ("North America", "america", True),  # docs: has
        ("North America", "amer", False),  # docs: !has
        ("KustoExplorerQueryRun", "Explorer", False),  # docs: a substring is not a term
        ("Kusto:  ad67d136-c1db-4f9f-88ef-d94f3b6b0b5a;;WilliamGates3rd", "c1db", True),  # docs: terms example
        ("Kusto:  ad67d136-c1db-4f9f-88ef-d94f3b6b0b5a;;WilliamGates3rd", "gates", False),
        ("xa b", "a ", False),  # measured: needle starts with a term character, "x" blocks it
        ("a b", "a ", True),  # measured
        ("x ab y", " a", False),  # measured: needle ends with a term character, "b" blocks it
        ("b .b-", " ", True),  # measured: an all-delimiter needle is a plain substring
        ("anything", "", True),  # measured
        ("/subscriptions/1/providers/Microsoft.Web", "/providers/", True),  # finops: same as contains
        ("/autodiscover/autodiscover.json?@x.com/mapi/nspi", "/mapi/", True),
        ("/autodiscover/autodiscover.json?@x.com/MAPI/nspi", "/mapi/", True),  # case-insensitive
        ("@x.com/mapix/nspi", "/mapi/", False),
        ("&Email=autodiscover/autodiscover.json%3F@foo.com", "powershell", False),
        ("x=/PowerShell?a", "powershell", True),
        ("invalid_client", "client", True),  # "_" is a delimiter, so "client" is a term
        ("Protocol=Powershell", "Protocol", True),
        ("ProtocolX=1", "Protocol", False),
        ("café", "caf", False),  # é is a letter: "caf" is not a whole term of "café"
        ("Wi-Fi 6", "fi 6", True),  # a phrase of terms
    ],
)
def test_has_matches_whole_terms_and_phrases(source: str, needle: str, expected: bool) -> None:
    assert has(source, needle) is expected
    assert not_has(source, needle) is (not expected)


@pytest.mark.parametrize(
    ("source", "values", "expected"),
    [
        ("North America", ("south", "north"), True),  # docs: has_any
        ("NEW YORK", ("CAROLINA", "DAKOTA", "NEW"), True),  # docs: has_any example output
        ("NEWARK", ("CAROLINA", "DAKOTA", "NEW"), False),
        ("200", (200, 302, 401), True),  # integers are compared as their text
        ("302", (200, 302, 401), True),
        ("404", (200, 302, 401), False),
        ("2000", (200, 302, 401), False),  # whole terms only
        ("", (200, 302, 401), False),
        ("-", ("/mapi/", "powershell"), False),
        ("abc", (), False),
    ],
)
def test_has_any(source: str, values: tuple[Any, ...], expected: bool) -> None:
    assert has_any(source, values) is expected


@pytest.mark.parametrize(
    ("source", "prefix", "expected"),
    [
        ("North America", "ame", True),  # docs: hasprefix
        ("North America", "mer", False),  # docs: !hasprefix
        ("x-error", "err", True),  # measured: only the leading boundary counts
        ("err or", "r o", False),  # measured
        ("/autodiscover/autodiscover.json", "/autodiscover/autodiscover.json", True),
        ("/AutoDiscover/AutoDiscover.json", "/autodiscover/autodiscover.json", True),
        ("/x/autodiscover/autodiscover.jsonp", "/autodiscover/autodiscover.json", True),  # delimiter-led: substring
        ("/autodiscover/autodiscover.xml", "/autodiscover/autodiscover.json", False),
    ],
)
def test_hasprefix(source: str, prefix: str, expected: bool) -> None:
    assert hasprefix(source, prefix) is expected


@pytest.mark.parametrize(
    ("source", "needle", "expected"),
    [("FabriKam", "BRik", True), ("Fabrikam", "xyz", False), ("a@b", "@", True), ("", "", True), ("", "a", False)],  # docs
)
def test_contains(source: str, needle: str, expected: bool) -> None:
    assert contains(source, needle) is expected


@pytest.mark.parametrize(
    ("source", "prefix", "expected"),
    [
        ("Fabrikam", "fab", True),  # docs: startswith
        ("Fabrikam", "kam", False),  # docs: !startswith
        ("192.168.1.7", "192.168.", True),
        ("192.168.not-an-address", "192.168.", True),  # a prefix of text, not an address test
        ("192.1681.1.7", "192.168.", False),
        ("10.0.0.1", "192.168.", False),
        ("", "192.168.", False),
        ("t=abc", "t=", True),
        ("T=abc", "t=", True),  # case-insensitive
        ("at=abc", "t=", False),
    ],
)
def test_startswith(source: str, prefix: str, expected: bool) -> None:
    assert startswith(source, prefix) is expected
    assert not_startswith(source, prefix) is (not expected)


@pytest.mark.parametrize(
    ("value", "candidates", "expected"),
    [
        ("abc", ("123", "345", "ABC"), True),  # docs: in~
        ("bca", ("123", "345", "ABC"), False),  # docs: !in~
        ("msrpc", ("-", "MSRPC"), True),
        ("-", ("-", "MSRPC"), True),
        ("MSRPC2", ("-", "MSRPC"), False),
        ("", ("-", "MSRPC"), False),
    ],
)
def test_in_ci(value: str, candidates: tuple[str, ...], expected: bool) -> None:
    assert in_ci(value, candidates) is expected
    assert not_in_ci(value, candidates) is (not expected)


@pytest.mark.parametrize(
    ("source", "pattern", "expected"),
    [
        ("Fabrikam", "b.*k", True),  # docs: matches regex
        ("Fabrikam", "B.*K", False),  # case-sensitive
        ("&Email=autodiscover/autodiscover.json%3F@evil.contoso/owa/", PROXYSHELL_DOMAIN, True),
        ("@evil.com/mapi", PROXYSHELL_DOMAIN, False),  # three letters then "/": needs 4 to 8
        ("@a.COMx/", PROXYSHELL_DOMAIN, True),
        ("a@b.c/", PROXYSHELL_DOMAIN, False),
        ("x:443/mapi", PROXYSHELL_PORT, True),
        ("x:4/mapi", PROXYSHELL_PORT, False),
        ("x:44444/", PROXYSHELL_PORT, False),  # five digits: the colon must come right before 2 to 4
        ("x:443", PROXYSHELL_PORT, False),
        ("ab\n", "b$", False),  # RE2: $ is end of text; Python's re would say true here
        ("x:٤٤/", r"\:\d{2}\/", False),  # RE2: \d is ASCII; Python's re would say true here
        ("a\ud800b", "a.b", True),  # a lone surrogate is one character (U+FFFD) to RE2
    ],
)
def test_matches_regex_is_re2(source: str, pattern: str, expected: bool) -> None:
    assert matches_regex(source, pattern) is expected


def test_a_pattern_re2_rejects_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"not valid RE2.*invalid perl operator"):
        matches_regex("ab", "(?<=a)b")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hello", 5),  # docs
        ("⒦⒰⒮⒯⒪", 15),  # docs: three bytes each
        ("", 0),
        ("é", 2),
        ("😀", 4),
        ("\ud800", 3),  # a lone surrogate: .NET writes U+FFFD, also three bytes
        ("-", 1),
    ],
)
def test_string_size_counts_utf8_bytes(source: str, expected: int) -> None:
    assert string_size(source) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("192.168.1.1/24", True),  # docs
        ("10.1.2.3/24", True),  # docs
        ("202.1.2.3", False),  # docs
        ("127.0.0.1", False),  # docs
        ("10.1.2.3", True),  # docs: example table
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("172.15.255.255", False),
        ("192.169.0.1", False),
        ("203.0.113.7", False),
        ("10.1.2.3/4", False),  # the masked range 0.0.0.0/4 is not all private
        ("10.1.2.3/8", True),
        ("::1", None),  # IPv6: not an IPv4 string, so null (docs: null when parsing fails)
        ("fe80::1", None),
        ("::ffff:10.0.0.1", None),
        ("", None),
        ("-", None),
        ("256.1.1.1", None),
        ("10.1.1", None),
        ("10.1.1.1/33", None),
        (" 10.1.1.1", None),
        ("010.1.1.1", True),  # leading zeros read as decimal (a decision; undocumented)
    ],
)
def test_ipv4_is_private(ip: str, expected: bool | None) -> None:
    assert ipv4_is_private(ip) is expected


def test_min_and_max_of_datetimes_ignore_nulls() -> None:
    a = datetime(2026, 11, 26, 1, tzinfo=UTC)
    b = a + timedelta(hours=3)
    assert min_datetime([b, None, a]) == a
    assert max_datetime([b, None, a]) == b
    assert min_datetime([]) is None
    assert max_datetime([None]) is None


def test_fold_keeps_length_and_is_case_insensitive_for_the_rules_needles() -> None:
    assert fold("ß") == "ß"  # upper case would be "SS": kept, so positions stay aligned
    assert fold("Exchange Back End") == fold("EXCHANGE BACK END")
    assert not is_term_char("_")
    assert is_term_char("é")
    assert is_term_char("٣")


# Property tests. Text is drawn from a small alphabet so terms, delimiters and case collide often.
ALPHABET = "aAbB01/. -_@:éÉ"
texts = st.text(alphabet=ALPHABET, max_size=12)


def _terms(text: str) -> list[str]:
    """The maximal runs of term characters: the docs' definition, written independently of _term_match."""
    terms, current = [], ""
    for char in text:
        if is_term_char(char):
            current += char
        elif current:
            terms.append(current)
            current = ""
    if current:
        terms.append(current)
    return terms


@given(texts, st.text(alphabet="aAbB01éÉ", min_size=1, max_size=4))
def test_has_of_one_term_is_membership_in_the_terms(source: str, term: str) -> None:
    assert has(source, term) is (fold(term) in [fold(t) for t in _terms(source)])
    assert hasprefix(source, term) is any(fold(t).startswith(fold(term)) for t in _terms(source))


@given(texts, st.text(alphabet=ALPHABET, max_size=4), st.sampled_from("/. -@:"), st.sampled_from("/. -@:"))
def test_has_of_a_delimiter_bounded_needle_is_contains(source: str, middle: str, left: str, right: str) -> None:
    needle = left + middle + right
    assert has(source, needle) is contains(source, needle)
    assert hasprefix(source, needle) is contains(source, needle)


@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=40))
@settings(max_examples=25, deadline=None)
def test_term_and_string_operators_agree_with_duckdb_kql(pairs: list[tuple[str, str]]) -> None:
    """duckdb-kql's rules were measured on the Kusto Emulator; ours are written independently."""
    connection = duckdb_kql.connect()
    connection.sql("CREATE TABLE T (i INTEGER, s VARCHAR, n VARCHAR)")
    connection.executemany("INSERT INTO T VALUES (?, ?, ?)", [(i, s, n) for i, (s, n) in enumerate(pairs)])
    query = (
        "T | extend h = s has n, p = s hasprefix n, c = s contains n, w = s startswith n, "
        'x = s in~ ("ab", "A/b", "-", "é") | order by i asc'
    )
    for i, s, n, h, p, c, w, x in duckdb_kql.kql(connection, query).fetchall():
        assert (has(s, n), hasprefix(s, n), contains(s, n), startswith(s, n)) == (h, p, c, w), (i, s, n)
        assert in_ci(s, ("ab", "A/b", "-", "é")) is x, s


ascii_texts = st.text(alphabet="abcXYZ019.:/@-", max_size=20)


@given(ascii_texts)
def test_the_rules_patterns_mean_the_same_to_re2_and_python_re(source: str) -> None:
    """Where Python's re and RE2 agree (these two patterns, ASCII text), the two engines must agree."""
    for pattern in (PROXYSHELL_DOMAIN, PROXYSHELL_PORT):
        assert matches_regex(source, pattern) is (re.search(pattern, source) is not None)


@given(st.text(max_size=30))
def test_string_size_is_the_sum_of_each_characters_utf8_length(source: str) -> None:
    assert string_size(source) == sum(len(c.encode("utf-8", errors="surrogatepass")) for c in source)


@given(st.tuples(*[st.integers(0, 255)] * 4))
def test_ipv4_is_private_matches_the_three_blocks(parts: tuple[int, int, int, int]) -> None:
    a, b, _, _ = parts
    expected = a == 10 or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)
    assert ipv4_is_private(".".join(map(str, parts))) is expected
