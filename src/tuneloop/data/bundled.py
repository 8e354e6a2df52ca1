"""The project's own intent data set: an online shop's support assistant, written by code.

Three batches, arriving the way a live system would see them:
- `base`: 10 intents x 60 rows = 600 rows, polite and neutral phrasing;
- `drift-1`: new phrasing (slang, short chat style, typos, other words) for 5 existing intents,
  5 x 20 = 100 rows;
- `drift-2`: a new intent, `cancel_subscription` (40 rows), plus new phrasing for 3 existing intents
  (3 x 15 = 45 rows), 85 rows in all.

Rows are templates x slot fillers (products, order numbers, dates, amounts, places) dressed with
greetings, sign-offs, casing and injected typos, drawn from `random.Random` seeded with a string
(stable across runs and Python hash seeds). Intents share vocabulary on purpose (payment_failed and
update_payment_method, track_order and delivery_delay, cancel_order and cancel_subscription), so a
model has to learn more than one keyword per intent. Every text, normalised and case-folded the way
ingest compares texts, occurs once across all three batches: no batch repeats or contradicts another.
"""

from __future__ import annotations

import random
import re
from functools import cache
from pathlib import Path

import pandas as pd

from tuneloop.data.validate import normalize_text

BATCHES = ("base", "drift-1", "drift-2")
NEW_INTENT = "cancel_subscription"


def _choices(values: str) -> tuple[str, ...]:
    """Alternatives written compactly as one "|"-separated string ("|a" means "nothing, or a")."""
    return tuple(values.split("|"))


# Slot fillers: {p} product, {d} when, {c} carrier, {a} place, {k} card, {s} plan.
_SLOTS: dict[str, tuple[str, ...]] = {
    name: _choices(values)
    for name, values in {
        "p": "blue hoodie|running shoes|coffee grinder|phone case|desk lamp|yoga mat|wireless earbuds|"
        "backpack|winter jacket|cast iron pan|kids raincoat|bluetooth speaker|wool scarf|standing desk|"
        "air fryer|linen sheets",
        "d": "yesterday|last monday|on the 3rd|two weeks ago|last friday|on march 12|this morning|"
        "10 days ago|last week|on tuesday",
        "c": "DHL|UPS|the courier|royal mail|FedEx|the driver",
        "a": "my office|my parents' house|12 Elm Street|the pickup locker|my new flat|45 Harbour Road|"
        "my neighbour's place|the store near me",
        "k": "visa|mastercard|amex|debit card|credit card|bank card",
        "s": "monthly box|premium plan|annual membership|snack subscription|family plan|coffee club|"
        "delivery pass",
    }.items()
}


def _fill_number(slot: str, rng: random.Random) -> str:
    number = rng.randint(10000, 99999)
    if slot == "o":  # order numbers look like "#48213", "A-48213" or plain digits
        return rng.choice(("#{}", "A-{}", "{}")).format(number)
    if slot == "m":  # an amount of money: 5 to 300 in one of three currencies
        return rng.choice(("${}", "{} euros", "£{}")).format(5 + number % 296)
    return str(2 + number % 20)  # "n": days late, 2 to 21


# intent -> templates, one a line. {p} product, {o} order, {d} when, {n} days, {c} carrier,
# {a} place, {k} card, {s} subscription, {m} amount.
_BASE = {
    "track_order": """where is my order {o}
can you tell me where my {p} is
has order {o} shipped yet
i'd like to track my package
what's the tracking number for {o}
any update on the {p} i ordered {d}
how do i check the status of my order
is my {p} on its way
where's the parcel i ordered {d}
can i get a shipping update on order {o}
which courier has my {p}""",
    "cancel_order": """i want to cancel order {o}
please cancel the {p} i bought {d}
can i still cancel my order before it ships
i ordered the wrong {p}, cancel it
stop order {o}, i don't need it anymore
how do i cancel an order i just placed
i changed my mind about the {p}, call off the order
cancel my purchase from {d}
is it too late to cancel order {o}
don't ship the {p}, i want to cancel
please void order {o}
i don't want the {p} after all, stop the order before it leaves""",
    "return_item": """how do i return the {p}
i want to send back the {p} i got {d}
the {p} doesn't fit, can i return it
i need a return label for order {o}
what's your return policy for a {p}
the {p} arrived broken and i want to return it
can i exchange the {p} for a different size
where do i drop off a return
i'd like to start a return for order {o}
the {p} is not what i expected, i'm sending it back""",
    "refund_status": """where is my refund for order {o}
i returned the {p} {d} but haven't been refunded
when will i get my money back
has my refund of {m} been processed
how long do refunds take to show up on my {k}
i still haven't received the refund for the {p}
can you check the status of my refund
you said you'd refund {m}, where is it
my refund for order {o} is taking forever
is the refund going to my {k} or store credit""",
    "change_address": """i need to change the delivery address for order {o}
can you ship the {p} to {a} instead
i moved, please update my shipping address
wrong address on my order, can i fix it
please send order {o} to {a}
how do i edit the address on an order i already placed
update my address to {a} before the {p} ships
i typed my street name wrong on order {o}
can i redirect my parcel to {a}
change where my order is being delivered""",
    "payment_failed": """my payment didn't go through
why was my {k} declined
i tried to pay {m} but it failed
checkout keeps giving me a payment error
order {o} says payment failed
i was charged but the order says payment unsuccessful
my {k} keeps getting rejected at checkout
the payment for the {p} won't process
the transaction failed when i tried to buy the {p}
why can't i complete my purchase, my {k} is fine""",
    "reset_password": """i forgot my password
how do i reset my password
i can't log into my account
the password reset email never arrived
i'm locked out of my account
my login isn't working, i need a new password
send me a link to reset my password
it keeps saying incorrect password when i sign in
how do i change my password
i can't remember the password for my account""",
    "update_payment_method": """i want to update my card details
how do i change my payment method
please replace my {k} with a new one
my {k} expired, where do i add the new one
can i pay with paypal instead of my {k}
remove my old {k} from my account
i got a new {k}, how do i update it
add a different card for future orders
update the billing card on my account
switch my default payment to my {k}""",
    "delivery_delay": """my {p} was supposed to arrive {d} and it's still not here
why is order {o} late
the delivery is {n} days overdue
my package is delayed, what's going on
it's been {n} days and my {p} hasn't arrived
the estimated delivery date for order {o} has passed
why is shipping taking so long
my order is late again
{c} said it would come {d} but nothing showed up
the {p} still hasn't been delivered, it's way past the date""",
    "talk_to_human": """can i talk to a real person
i want to speak to an agent
connect me with customer service
is there a human i can chat with
let me talk to someone, the bot isn't helping
i need a real person about order {o}
transfer me to a representative
can someone from support call me
get me a manager
i don't want a bot, i want a person""",
}

_DRIFT_1 = {
    "track_order": """wheres my stuff
yo where my {p} at
pkg status
any news on my parcel
tracking pls
did u ship {o} yet
hows my order doing
lemme see where my package is
is {o} out for delivery
where my delivery at""",
    "refund_status": """still no money back
wheres my $$ for the {p}
refund? its been {n} days
did u guys send my refund yet
no refund on my {k} yet smh
waiting on {m} back
when do i get reimbursed for {o}
money back status
reimbursement for the {p} still pending
yall owe me {m}""",
    "payment_failed": """card got declined wtf
cant pay
payment error again
checkout broken, {k} wont go thru
it wont take my {k}
tried paying {m} and it bounced
payment keeps failing on {o}
why wont it let me pay
declined again ugh
transaction error at checkout""",
    "reset_password": """cant login
locked out again
forgot pw
pw reset link pls
reset link never came
login not working help
how do i get back into my acct
cant sign in says wrong password
need new pw
acct locked cant get in""",
    "talk_to_human": """human pls
agent
real person now
talk to someone
operator
get me a human
stop bot, person please
live chat with a person
can i get an actual human
rep please""",
}

_DRIFT_2 = {
    NEW_INTENT: """cancel my subscription
i want to stop my {s}
how do i end my membership
please don't renew my {s}
turn off auto-renew on my {s}
i'd like to unsubscribe from the {s}
stop charging me every month for the {s}
cancel the {s} before the next billing date
how can i quit my plan
end my {s} at the end of this month
i no longer want the {s}, cancel it
close my membership""",
    "delivery_delay": """still waiting on my {p}, this is ridiculous
{c} lost track of my parcel, it's {n} days late
the package missed its delivery window
the shipment has been stuck in transit since {d}
order {o} has been out for delivery for {n} days
nothing arrived and the tracking hasn't moved since {d}
how much longer for the {p}? it's overdue""",
    "change_address": """wrong postcode on my order
i'm not home this week, deliver to {a}
ship to my work address instead
new flat, new address, update order {o}
fix the zip code on order {o}
reroute the {p} to {a}
can the courier bring it to {a} instead""",
    "return_item": """the {p} is defective, how do i send it back
i want to swap the {p} for another colour
return label pls for the {p}
bought the {p} as a gift and they don't want it
does the {p} qualify for free returns
got two of the {p} by mistake, sending one back
where's the nearest return point for order {o}""",
}

# batch -> (templates, rows per intent (new intent: its own count), style, typo rate)
_PLAN = {
    "base": (_BASE, 60, "polite", 0.12),
    "drift-1": (_DRIFT_1, 20, "chat", 0.35),
    "drift-2": (_DRIFT_2, 15, "mixed", 0.2),
}
_NEW_INTENT_ROWS = 40

# (greetings, sign-offs); the empty first entry of each is "none".
_POLITE = (
    _choices(
        "|hi, |hello, |hey there, |excuse me, |good morning, |quick question: |sorry to bother you, |"
        "hi team, |please help, "
    ),
    _choices("|?|.| please|, thanks| thank you!| asap|!"),
)
_CHAT = (
    _choices("|yo |hey |ugh |hello?? |pls |ok so |umm |hiii "),
    _choices("|??|?| pls| !!| thx| rn| lol| ..."),
)
_SLOT_RE = re.compile(r"\{(\w)\}")


def _typo(text: str, rng: random.Random) -> str:
    """One slip of the keyboard in one word of four letters or more: swap, drop or double a letter."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not spots:
        return text
    i = rng.choice(spots)
    w, j = words[i], rng.randrange(1, len(words[i]) - 1)
    kind = rng.randrange(3)
    words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2 :], w[:j] + w[j + 1 :], w[:j] + w[j] + w[j:])[kind]
    return " ".join(words)


def _render(template: str, style: str, typo_rate: float, rng: random.Random) -> str:
    def slot(match: re.Match[str]) -> str:
        name = match.group(1)
        return rng.choice(_SLOTS[name]) if name in _SLOTS else _fill_number(name, rng)

    text = _SLOT_RE.sub(slot, template)
    if rng.random() < typo_rate:
        text = _typo(text, rng)
    if style == "mixed":
        style = rng.choice(("polite", "chat"))
    prefixes, suffixes = _POLITE if style == "polite" else _CHAT
    text = rng.choice(prefixes) + text + rng.choice(suffixes)
    if style == "polite" and rng.random() < 0.6:  # sentence case, as people who type carefully write
        text = re.sub(r"\bi\b", "I", text[:1].upper() + text[1:])
    return normalize_text(text)


def _intent_rows(
    templates: str, n: int, style: str, typo_rate: float, rng: random.Random, seen: set[str]
) -> list[str]:
    lines = templates.splitlines()
    rows: list[str] = []
    for _ in range(n * 500):  # a bound, so a too-small template set fails loudly instead of looping
        if len(rows) == n:
            return rows
        text = _render(rng.choice(lines), style, typo_rate, rng)
        if text.casefold() not in seen:
            seen.add(text.casefold())
            rows.append(text)
    raise RuntimeError(f"templates gave only {len(rows)} distinct rows of {n}: {lines[0]!r}...")


@cache
def _generate(seed: int) -> dict[str, tuple[tuple[str, str], ...]]:
    seen: set[str] = set()  # shared by all batches, so no text repeats anywhere
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for batch, (intents, per_intent, style, typo_rate) in _PLAN.items():
        rows: list[tuple[str, str]] = []
        for label, templates in intents.items():
            n = _NEW_INTENT_ROWS if label == NEW_INTENT else per_intent
            rng = random.Random(f"{seed}:{batch}:{label}")
            rows.extend((text, label) for text in _intent_rows(templates, n, style, typo_rate, rng, seen))
        out[batch] = tuple(rows)
    return out


def bundled_frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    """The three batches as DataFrames with columns text, label, keyed base, drift-1, drift-2."""
    return {
        batch: pd.DataFrame(list(rows), columns=["text", "label"]) for batch, rows in _generate(seed).items()
    }


def write_bundled(target_dir: Path, fmt: str = "csv", seed: int = 0) -> dict[str, Path]:
    """Write `base`, `drift-1` and `drift-2` as `<batch>.<fmt>` (csv, jsonl or parquet) under `target_dir`."""
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ValueError(f"fmt must be csv, jsonl or parquet, not {fmt!r}")
    target_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for batch, frame in bundled_frames(seed).items():
        path = paths[batch] = target_dir / f"{batch}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(path, index=False)
    return paths
