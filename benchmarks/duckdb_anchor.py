"""The anchor: DuckDB running the rule as one SQL statement over a JSON Lines file.

    python benchmarks/duckdb_anchor.py <rows.jsonl> <start> <end> <out.json> [--computer NAME]

The statement is a plain translation of the KQL (reference/kql-and-sentinel.md §0), with the same
semantics as detector/logic/high_port_count.py:
- strcat(scStatus, ".", scSubStatus) and the two case() tables (the Win32 one compared lower-case, as =~);
- tohex(tolong(x)): tolong as .NET Int64.TryParse (regexp + TRY_CAST, null when out of range), tohex as
  lower(hex(bigint)) which prints 64-bit two's complement like Kusto; null gives "";
- url_decode = .NET Uri.UnescapeDataString ('+' kept, malformed escapes and non-UTF-8 %XX sequences kept
  as written): DuckDB's own url_decode is exactly that whenever the decoded bytes are valid UTF-8 ('+',
  '%zz', a trailing '%', '%%41', '%2541' all agree). It raises on invalid UTF-8, so for those values only
  (wrapped in try(), evaluated once per distinct csUriQuery) a Python UDF supplies the value, decoding
  one character at a time: a valid UTF-8 character of 1 to 4 escaped bytes, or else the escape as written;
- makeset with cap 128 keeping the smallest values: list(DISTINCT x ORDER BY x)[1:128], nulls and, for
  strings, "" ignored (FILTER), [] when nothing is left;
- bin(TimeGenerated, 10m) on epoch microseconds; portCount >= 30; order by portCount desc, then the key.
--computer replaces Computer by a constant, which is what the IIS source does (Computer is not in a
W3C log), so the same statement also gives the expected result of the IIS benchmark.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import duckdb

WINDOW_BIN_US = 600 * 1_000_000
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
CAP = 128
THRESHOLD = 30

SQL = r"""
WITH src AS (
    SELECT * FROM read_json(
        $path, format = 'newline_delimited',
        columns = {TimeGenerated: 'VARCHAR', Computer: 'VARCHAR', sSiteName: 'VARCHAR', sIP: 'VARCHAR',
                   sPort: 'BIGINT', csMethod: 'VARCHAR', csUriQuery: 'VARCHAR', csUserName: 'VARCHAR',
                   cIP: 'VARCHAR', csUserAgent: 'VARCHAR', scStatus: 'VARCHAR', scSubStatus: 'VARCHAR',
                   scWin32Status: 'VARCHAR'})
),
typed AS (
    SELECT
        epoch_us(CAST(TimeGenerated AS TIMESTAMPTZ)) AS t_us,
        coalesce(cIP, '') AS cIP,
        coalesce($computer, Computer, '') AS Computer,
        coalesce(sIP, '') AS sIP,
        sPort,
        coalesce(sSiteName, '') AS sSiteName,
        coalesce(csMethod, '') AS csMethod,
        coalesce(csUriQuery, '') AS csUriQuery,
        coalesce(csUserName, '') AS csUserName,
        coalesce(csUserAgent, '') AS csUserAgent,
        coalesce(scStatus, '') || '.' || coalesce(scSubStatus, '') AS scStatusFull,
        coalesce(lower(hex(TRY_CAST(nullif(regexp_extract(coalesce(scWin32Status, ''),
            '^[ \t\r\n]*([+-]?[0-9]+)[ \t\r\n]*$', 1), '') AS BIGINT))), '') AS scWin32Status_Hex
    FROM src
),
in_window AS (
    SELECT * FROM typed WHERE t_us >= $start_us AND t_us < $end_us
),
decoded AS (  -- url_decode once per distinct value
    SELECT csUriQuery,
           coalesce(try(url_decode(csUriQuery)), py_url_decode_invalid_utf8(csUriQuery)) AS decodedUriQuery
    FROM (SELECT DISTINCT csUriQuery FROM in_window)
),
enriched AS (
    SELECT w.*, d.decodedUriQuery,
        CASE w.scStatusFull
            WHEN '401.0' THEN 'Access denied.'
            WHEN '401.1' THEN 'Logon failed.'
            WHEN '401.2' THEN 'Logon failed due to server configuration.'
            WHEN '401.3' THEN 'Unauthorized due to ACL on resource.'
            WHEN '401.4' THEN 'Authorization failed by filter.'
            WHEN '401.5' THEN 'Authorization failed by ISAPI/CGI application.'
            WHEN '403.0' THEN 'Forbidden.'
            WHEN '403.4' THEN 'SSL required.'
            ELSE 'See - https://support.microsoft.com/help/943891/the-http-status-code-in-iis-7-0-iis-7-5-and-iis-8-0'
        END AS scStatusFull_Friendly,
        CASE lower(w.scWin32Status_Hex)
            WHEN '775' THEN 'The referenced account is currently locked out and cannot be logged on to.'
            WHEN '52e' THEN 'Logon failure: Unknown user name or bad password.'
            WHEN '532' THEN 'Logon failure: The specified account password has expired.'
            WHEN '533' THEN 'Logon failure: Account currently disabled.'
            WHEN '2ee2' THEN 'The request has timed out.'
            WHEN '0' THEN 'The operation completed successfully.'
            WHEN '1' THEN 'Incorrect function.'
            WHEN '2' THEN 'The system cannot find the file specified.'
            WHEN '3' THEN 'The system cannot find the path specified.'
            WHEN '4' THEN 'The system cannot open the file.'
            WHEN '5' THEN 'Access is denied.'
            WHEN '8009030e' THEN 'SEC_E_NO_CREDENTIALS'
            WHEN '8009030c' THEN 'SEC_E_LOGON_DENIED'
            ELSE 'See - https://msdn.microsoft.com/library/cc231199.aspx'
        END AS scWin32Status_Friendly
    FROM in_window w JOIN decoded d USING (csUriQuery)
),
summarized AS (
    SELECT
        t_us // $bin_us * $bin_us AS bin_us, cIP, Computer, sIP,
        list(DISTINCT sPort ORDER BY sPort) FILTER (WHERE sPort IS NOT NULL) AS set_sPort,
        list(DISTINCT csUserName ORDER BY csUserName)
            FILTER (WHERE csUserName <> '') AS set_csUserName,
        list(DISTINCT decodedUriQuery ORDER BY decodedUriQuery)
            FILTER (WHERE decodedUriQuery <> '') AS set_decodedUriQuery,
        list(DISTINCT sSiteName ORDER BY sSiteName)
            FILTER (WHERE sSiteName <> '') AS set_sSiteName,
        list(DISTINCT csUserAgent ORDER BY csUserAgent)
            FILTER (WHERE csUserAgent <> '') AS set_csUserAgent,
        list(DISTINCT csMethod ORDER BY csMethod)
            FILTER (WHERE csMethod <> '') AS set_csMethod,
        list(DISTINCT scStatusFull ORDER BY scStatusFull)
            FILTER (WHERE scStatusFull <> '') AS set_scStatusFull,
        list(DISTINCT scStatusFull_Friendly ORDER BY scStatusFull_Friendly)
            FILTER (WHERE scStatusFull_Friendly <> '') AS set_scStatusFull_Friendly,
        list(DISTINCT scWin32Status_Hex ORDER BY scWin32Status_Hex)
            FILTER (WHERE scWin32Status_Hex <> '') AS set_scWin32Status_Hex,
        list(DISTINCT scWin32Status_Friendly ORDER BY scWin32Status_Friendly)
            FILTER (WHERE scWin32Status_Friendly <> '') AS set_scWin32Status_Friendly,
        count(*) AS ConnectionsCount
    FROM enriched
    GROUP BY ALL
)
SELECT
    strftime(make_timestamp(bin_us), '%Y-%m-%dT%H:%M:%SZ') AS TimeGenerated, cIP,
    coalesce(set_sPort, [])[1:$cap] AS set_sPort,
    coalesce(set_csUserName, [])[1:$cap] AS set_csUserName,
    coalesce(set_decodedUriQuery, [])[1:$cap] AS set_decodedUriQuery,
    Computer,
    coalesce(set_sSiteName, [])[1:$cap] AS set_sSiteName,
    sIP,
    coalesce(set_csUserAgent, [])[1:$cap] AS set_csUserAgent,
    coalesce(set_csMethod, [])[1:$cap] AS set_csMethod,
    coalesce(set_scStatusFull, [])[1:$cap] AS set_scStatusFull,
    coalesce(set_scStatusFull_Friendly, [])[1:$cap] AS set_scStatusFull_Friendly,
    coalesce(set_scWin32Status_Hex, [])[1:$cap] AS set_scWin32Status_Hex,
    coalesce(set_scWin32Status_Friendly, [])[1:$cap] AS set_scWin32Status_Friendly,
    ConnectionsCount,
    len(coalesce(set_sPort, [])[1:$cap]) AS portCount
FROM summarized
WHERE len(coalesce(set_sPort, [])[1:$cap]) >= $threshold
ORDER BY portCount DESC, bin_us, cIP, Computer, sIP
"""


def url_decode_invalid_utf8(text: str) -> str:
    """Uri.UnescapeDataString for the values DuckDB's url_decode rejects (their bytes are not all UTF-8).

    At each run of %XX escapes, take the shortest 1 to 4 escaped bytes that are one valid UTF-8
    character; when none are, keep that one escape as written and go on at the next. Where no character
    starts, .NET keeps the maximal ill-formed subsequence as written: a lead byte and continuation bytes,
    and a continuation byte never starts a character, so keeping one escape at a time gives the same text.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        escapes = []
        end = i
        while (match := _ESCAPE.match(text, end)) is not None:
            escapes.append(match.group(0))
            end = match.end()
        if not escapes:
            out.append(text[i])
            i += 1
            continue
        data = bytes(int(escape[1:], 16) for escape in escapes)
        k = 0
        while k < len(data):
            for size in (1, 2, 3, 4):
                try:
                    char = data[k : k + size].decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if len(char) == 1:
                    out.append(char)
                    k += size
                    break
            else:
                out.append(escapes[k])
                k += 1
        i = end
    return "".join(out)


def run(path: Path, start: str, end: str, computer: str | None) -> list[dict[str, object]]:
    """The rule's result rows, as dicts with the KQL output column names."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.create_function(
        "py_url_decode_invalid_utf8",
        url_decode_invalid_utf8,
        ["VARCHAR"],
        "VARCHAR",
        side_effects=False,
    )
    bounds = con.execute(
        "SELECT epoch_us(CAST($s AS TIMESTAMPTZ)), epoch_us(CAST($e AS TIMESTAMPTZ))", {"s": start, "e": end}
    ).fetchone()
    if bounds is None:
        raise RuntimeError("DuckDB returned no window bounds")
    params = {
        "path": str(path),
        "computer": computer,
        "start_us": bounds[0],
        "end_us": bounds[1],
        "bin_us": WINDOW_BIN_US,
        "cap": CAP,
        "threshold": THRESHOLD,
    }
    cursor = con.execute(SQL, params)
    names = [d[0] for d in cursor.description]
    results = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        row["timestamp"] = row["TimeGenerated"]
        row["IPCustomEntity"] = row["cIP"]
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("start")
    parser.add_argument("end")
    parser.add_argument("out", type=Path)
    parser.add_argument("--computer", default=None, help="replace Computer by this constant (what the IIS source does)")
    args = parser.parse_args()
    results = run(args.path, args.start, args.end, args.computer)
    args.out.write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
