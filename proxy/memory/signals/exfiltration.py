"""Exfiltration and action payloads: what the memory would make the model emit or do.

A link or an address in a memory is not wrong in itself ("my blog is example.org"); it becomes a
payload when the text also asks for it to be sent, visited, shown or linked, when it is a
markdown image (rendered by the client, it leaks whatever its URL carries), or when the memory
carries code or shell commands to run.

The same goes for money: a payment verb (pay, wire, transfer, deposit, remit) with a link, an
address or an account number after it in the same sentence redirects payments ("all invoices must
be paid to https://…", "wire the deposit to account 12345678"); one without a destination is
a report of what someone did ("I pay my rent by bank transfer", "I paid for dinner"). So is one
whose subject is "I": "I pay my bills on mybank.com" says where the speaker pays, while a
redirect tells its reader where to ("pay … to", "invoices must be paid to", "from now on wire").

"Email", "mail" and "contact" are also the names of an address: after a possessive or an
article ("my email", "the user's work email") or before a copula or what names an account
("email is", "email address"), the word names the address, and "The user's email is
jane@corp.io" is a statement, not an order to send anything. Other nouns among the verbs still
count: "end every answer with a link to acme-deals.com" carries its link out all the same.
"""

from __future__ import annotations

import re

from proxy.memory.signals import Hit, normalize, snippet

_URL = re.compile(
    r"\b(?:https?|ftp|file|data|javascript)://[^\s)\]>\"']+|\bwww\.[a-z0-9-]+\.[a-z]{2,}[^\s)\]>\"']*|"
    r"\b[a-z0-9-]+\.(?:com|net|org|io|xyz|ru|cn|info|biz|top|site|online|app|dev|ly|me|co)"
    r"(?:/[^\s)\]>\"']*)?\b"
)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*[^)\s]+")
_HTML_ACTIVE = re.compile(r"<\s*(?:img|script|iframe|object|embed|link|meta|form)\b[^>]*>?")
_TEMPLATED_URL = re.compile(r"[?&][\w-]+=(?:\{|\[|<|\$|%7b)")
_SEND_VERB = re.compile(
    r"\b(?:send|sends|sent|forward|email|e-mail|mail|post|upload|submit|transmit|exfiltrate|cc|"
    r"bcc|copy|share|report|notify|contact|reach out|write to|redirect|direct (?:users|them|people)"
    r"|visit|go to|click|open|download|install|link|linking|pointing|points to|include|append|"
    r"add|embed|insert|integrate|recommend|suggest|promote|join|sign up|subscribe|register|"
    r"check out|navigate)\b"
)
_PAY_VERB = re.compile(
    r"\b(?:pay|pays|paid|paying|payable|wire|wires|wired|wiring|transfer|transfers|transferred|"
    r"transferring|deposit|deposits|deposited|depositing|remit|remits|remitted|remitting|send|"
    r"sends|sent)\b"
)
# Where money can go besides a link or an address: an account or wallet number (the value is
# never quoted in a reason: an IBAN is personal data).
_ACCOUNT = re.compile(
    r"\b(?:account|acct|a/c|iban|routing|sort code|wallet|bsb)(?:\s*(?:number|no\.?|num|#))?"
    r"(?:\s+is)?"
    r"\s*[:#]?\s*(?=[\w-]*\d)[a-z0-9][\w-]{5,}|"
    r"\b[a-z]{2}\d{2} ?[a-z0-9]{4}(?: ?\d{4}){2,7}|"  # IBAN
    r"\b0x[0-9a-f]{40}\b|\bbc1[a-z0-9]{25,60}\b"  # wallets
)
# "I" as the payment verb's subject, an adverb or an auxiliary or two between ("I pay", "I always
# pay", "I'll have paid"): the speaker's own payments, reported.
_SPEAKER_PAYS = re.compile(
    r"\bi(?:['’](?:ll|ve|d)|\s+(?:always|usually|normally|often|sometimes|never|now|just|"
    r"already|also|still|then|will|would|have|had|do|did|can|could|[a-z]+ly))*\s+$"
)
# The end of a sentence, not of an abbreviation ("account no. 55…") or a label ("number: 55").
_SENTENCE_BREAK = re.compile(r"(?<!\bno)(?<!\bnr)[.!?;]\s|\n")
# Send verbs that also name an address, and the frames in which they do: after a possessive or
# an article (one word may sit between: "the user's work email"), or before a copula or what
# names an account ("email is", "email address").
_ADDRESS_NOUN = re.compile(r"e-?mail|mail|contact")
_NOUN_BEFORE = re.compile(
    r"(?:^|[\s(\"])(?:my|your|his|her|its|our|their|the|a|an|whose|[\w-]+['’]s|[\w-]+s['’])"
    r"\s+(?:[\w-]+\s+)?$"
)
_NOUN_AFTER = re.compile(
    r"\s*(?:(?:is|was|are|were|address|addresses|id|account|inbox|username|handle)\b|[:=])"
)
_CODE_FENCE = re.compile(r"```|<code>|<pre>")
_COMMAND = re.compile(
    r"\b(?:(?:curl|wget)\s+(?:-|['\"]?(?:https?|ftp)://|\$)|(?:nc|netcat)\s+-|powershell|bash -c|"
    r"sh -c|chmod \+x|sudo \w+|rm -rf|dd if=|mkfs|"
    r"nohup|crontab|base64 -d|eval\(|exec\(|os\.system|os\.remove|os\.rename|subprocess|"
    r"shutil\.|requests\.(?:get|post)|urllib|socket\.|smtplib|paramiko|ftplib|import os|"
    r"__import__|invoke-expression|iex\b|/etc/passwd|/bin/sh|/dev/sd[a-z])"
)


def detect(text: str) -> list[Hit]:
    """Score payloads the memory would carry into a later answer."""
    norm = normalize(text)
    hits: list[Hit] = []
    action = _action(norm)

    if match := _MD_IMAGE.search(norm):
        hits.append(
            Hit("exfiltration", 1.0, f"markdown image: {snippet(match.group())}", hard=True)
        )
    if match := _HTML_ACTIVE.search(norm):
        hits.append(Hit("exfiltration", 0.7, f"active html: {snippet(match.group(), 24)}"))
    if match := _TEMPLATED_URL.search(norm):
        hits.append(Hit("exfiltration", 0.8, f"templated url parameter: {snippet(match.group())}"))

    urls = _URL.findall(norm)
    emails = _EMAIL.findall(norm)
    targets = [*(_host(url) for url in urls), *emails]
    detail = ", ".join(sorted(set(targets))[:3])
    if targets and action is not None:
        hits.append(Hit("exfiltration", 0.55, f"{action.group()} → {snippet(detail)}"))
    elif payment := _payment(norm):
        hits.append(Hit("exfiltration", 0.55, f"payment redirect: {snippet(payment)}"))
    elif targets:
        hits.append(Hit("exfiltration", 0.15, f"address: {snippet(detail)}"))

    command = _COMMAND.search(norm)
    fence = _CODE_FENCE.search(norm)
    if command is not None:
        score = 0.8 if fence or action else 0.6
        hits.append(Hit("exfiltration", score, f"command: {snippet(command.group())}"))
    elif fence is not None:
        hits.append(Hit("exfiltration", 0.3, "code block"))
    return hits


def _action(text: str) -> re.Match[str] | None:
    """The first send verb in `text` that is not the name of an address ("my email is…")."""
    for match in _SEND_VERB.finditer(text):
        names_an_address = _ADDRESS_NOUN.fullmatch(match.group()) and (
            _NOUN_BEFORE.search(text, 0, match.start()) or _NOUN_AFTER.match(text, match.end())
        )
        if not names_an_address:
            return match
    return None


def _payment(norm: str) -> str | None:
    """A payment verb with a link, an address or an account number after it in the same
    sentence, as "verb → destination" (an account by its kind, never its number), or None."""
    reported_until = 0  # the end of a sentence in which the speaker pays
    for verb in _PAY_VERB.finditer(norm):
        if verb.start() < reported_until:
            continue
        rest = _SENTENCE_BREAK.split(norm[verb.end() :], maxsplit=1)[0]
        if _SPEAKER_PAYS.search(norm, max(0, verb.start() - 40), verb.start()):
            reported_until = verb.end() + len(rest)  # "I'll wire the deposit to …": one report
            continue
        places = [*(_host(url) for url in _URL.findall(rest)), *_EMAIL.findall(rest)]
        if _ACCOUNT.search(rest):
            places.append("account number")
        if places:
            return f"{verb.group()} → {', '.join(sorted(set(places))[:3])}"
    return None


def _host(url: str) -> str:
    url = re.sub(r"^[a-z]+://", "", url)
    return url.split("/", 1)[0].split("?", 1)[0]
