"""One market's load: make the table equal the raw partition, touching only the artists whose list changed.

Cost per market (DynamoDB requests), with the ledger of the previous load:
  unchanged artist                0 reads, 0 writes
  changed artist                  1 consistent Query + its changed items (BatchWriteItem, 25 per request)
  removed artist                  1 consistent Query + deletes of its items
  a market never loaded           0 reads (known empty), writes of every item
Without a usable ledger (first load into a table that already holds the market, or another table), every
artist is read (one Query each) and the market's GSI is swept once for artists that left.

Before the first write the load verifies the whole raw partition, refuses a mass deletion without consent,
and journals the artists it may touch; see ledger.py for how that makes a crash cheap to recover from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from toptracks_dagster.config import ALLOW_MASS_DELETE_TAG
from toptracks_dagster.dynamodb.ledger import (
    ALL_ARTISTS,
    clear_journal,
    read_journal,
    read_ledger,
    table_identity,
    write_journal,
    write_ledger,
)
from toptracks_dagster.dynamodb.loader import MarketLoader, outcome_digest
from toptracks_dagster.dynamodb.table import GSI_NAME
from toptracks_dagster.dynamodb.writer import LoadStats
from toptracks_dagster.raw_storage.resources import RawStorage


class MassDeletionRefused(RuntimeError):
    """The load would delete more than the allowed share of a market's items; nothing was written."""


@dataclass
class MarketLoadResult:
    market: str
    stats: LoadStats
    changed_artists: set[str] = field(default_factory=set)  # written, re-read or emptied by this load
    removed_artists: set[str] = field(default_factory=set)  # artists whose items this load deleted entirely
    had_no_items: set[str] = field(default_factory=set)  # changed artists known to have had no items before
    table_state: str = ""  # how the load knew what the table held: ledger / ledger+journal / empty / read


def load_market(
    client,
    table_name: str,
    endpoint: str,
    raw,
    storage: RawStorage,
    *,
    created_now: bool,
    concurrency: int,
    max_batch_retries: int,
    max_delete_share: float,
    delete_allowed: bool,
    log: Callable[[str], None],
) -> MarketLoadResult:
    """`raw`: a verified RawPartition of the market. Raises MassDeletionRefused before writing anything."""
    market = raw.market
    identity = table_identity(client, table_name, endpoint)
    ledger = None if created_now else read_ledger(storage, market, identity)
    journal = None if created_now else read_journal(storage, market, identity)
    untrusted: set[str] = set()
    if created_now:
        previous, state = {}, "empty (table created by this run)"
    elif journal is not None and ALL_ARTISTS in journal:
        previous, state = None, "read (a previous load was interrupted before it knew the table)"
    elif ledger is not None:
        previous, untrusted = ledger.digests(), journal or set()
        state = "ledger" + (f" + journal of {len(untrusted)} artist(s) from an interrupted load" if untrusted else "")
    elif journal is not None:
        previous, untrusted, state = {}, journal, f"empty but for an interrupted load's {len(journal)} artist(s)"
    elif not _market_has_items(client, table_name, market):
        previous, state = {}, "empty (no item of this market in the table)"
    else:
        previous, state = None, "read (no ledger for this table)"

    listed = set(raw.requested_at)
    if ledger is not None and journal is None and raw.fingerprint and ledger.raw_fingerprint == raw.fingerprint:
        # The very partition the last successful load made the table equal to: nothing to read or write.
        result = MarketLoadResult(market, LoadStats(), table_state="ledger (raw partition unchanged since then)")
        result.stats.add(
            artists=len(listed),
            items_unchanged=ledger.total_items(),
            artists_skipped_unchanged=len(ledger.artists),
        )
        return result
    if previous == {} and not untrusted:
        # Known empty: every artist is written and nothing can be deleted, so no digest is needed before the
        # load (it would build every item twice); the loader records each artist's digest as it writes.
        return _load_into_empty_market(
            client, table_name, raw, storage, identity, listed, state, concurrency, max_batch_retries, log
        )
    digests: dict[str, tuple[str, int]] = {}
    for outcome in raw.outcomes():
        digest = outcome_digest(outcome, market)
        if digest is not None:
            digests[outcome.artist_id] = digest
    if previous is None:
        changed, removed = set(digests), set()
    else:
        changed = {a for a, (d, _) in digests.items() if a in untrusted or previous.get(a) != d}
        removed = (set(previous) | untrusted) - listed

    if previous is not None and ledger is not None:
        before = ledger.total_items()
        deleting = sum(ledger.count(a) for a in removed) + sum(
            max(0, ledger.count(a) - digests[a][1]) for a in changed if a in digests
        )
        if before and deleting > max_delete_share * before and not delete_allowed:
            raise MassDeletionRefused(
                f"the load of {market} would delete {deleting} of {before} items ({100 * deleting / before:.0f} %, "
                f"above TOPTRACKS_MAX_DELETE_SHARE={100 * max_delete_share:.0f} %): {len(removed)} artist(s) left "
                f"the raw partition and {len(changed)} changed. Nothing was written. If this is intended, re-run "
                f"with the run tag {ALLOW_MASS_DELETE_TAG}=true"
            )

    had_no_items = {a for a in changed if previous is not None and a not in previous and a not in untrusted}
    result = MarketLoadResult(
        market,
        LoadStats(),
        changed_artists=changed,
        removed_artists=removed,
        table_state=state,
        had_no_items=had_no_items,
    )
    if previous is not None and not changed and not removed:
        result.stats.add(
            artists=len(listed),
            items_unchanged=sum(n for _, n in digests.values()),
            artists_skipped_unchanged=len(digests),
        )
        if ledger is not None and ledger.raw_fingerprint != raw.fingerprint:
            # Nothing to write, but the ledger now vouches for this partition: the next load of it reads nothing.
            write_ledger(storage, market, identity, ledger.artists, raw.fingerprint)
        return result  # nothing to write: no journal

    write_journal(storage, market, identity, {ALL_ARTISTS} if previous is None else changed | removed | untrusted)
    loader = _loaded(
        client,
        table_name,
        raw,
        concurrency,
        max_batch_retries,
        log,
        previous_ledger=previous,
        untrusted=untrusted,
        known_digests=digests,
    )
    result.stats = loader.stats
    kept = dict(digests)
    for artist_id in loader.ledger:  # error outcomes keep the digest of their previous list
        if artist_id not in kept and ledger is not None and artist_id in ledger.artists:
            kept[artist_id] = tuple(ledger.artists[artist_id])
    write_ledger(storage, market, identity, kept, raw.fingerprint)
    clear_journal(storage, market)
    return result


def _load_into_empty_market(
    client, table_name, raw, storage, identity, listed, state, concurrency, max_batch_retries, log
) -> MarketLoadResult:
    market = raw.market
    write_journal(storage, market, identity, listed)
    loader = _loaded(client, table_name, raw, concurrency, max_batch_retries, log, previous_ledger={})
    written = {a: (loader.ledger[a], loader.item_counts[a]) for a in loader.item_counts}
    write_ledger(storage, market, identity, written, raw.fingerprint)
    clear_journal(storage, market)
    return MarketLoadResult(
        market, loader.stats, changed_artists=set(written), table_state=state, had_no_items=set(written)
    )


def _loaded(client, table_name, raw, concurrency, max_batch_retries, log, **ledger_view) -> MarketLoader:
    """A MarketLoader that has loaded `raw` (its stats, ledger and item counts filled); `ledger_view`: what the
    load knows of the table before it (MarketLoader's previous_ledger, untrusted, known_digests)."""
    loader = MarketLoader(
        client,
        table_name,
        raw.market,
        concurrency=concurrency,
        max_batch_retries=max_batch_retries,
        log=log,
        **ledger_view,
    )
    loader.load(raw.outcomes())
    return loader


def _market_has_items(client, table_name: str, market: str) -> bool:
    """One GSI page of at most one key: does any item of this market exist? Used only when no ledger or journal
    of this table exists, i.e. no load of this pipeline has touched the market in this table."""
    page = client.query(
        TableName=table_name,
        IndexName=GSI_NAME,
        KeyConditionExpression="#c = :m",
        ExpressionAttributeNames={"#c": "country"},
        ExpressionAttributeValues={":m": {"S": market}},
        Limit=1,
        Select="COUNT",
    )
    return page.get("Count", 0) > 0 or "LastEvaluatedKey" in page
