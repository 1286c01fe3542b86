"""The patterns of instruction-bearing content, as data: what an override, a reveal request, a
role marker, a persistence marker, a trigger or an imperative aimed at the assistant looks like.

`instructions.py` matches them and scores what it finds; the patterns are kept apart so the
vocabulary can be read (and extended) without the matching logic, and the logic without the
vocabulary. All patterns match normalized text (`signals.normalize`: lower case, NFKC).
"""

from __future__ import annotations

import re

_INSTRUCTION_NOUNS = (
    r"(?:instructions?|prompts?|rules?|directions?|directives?|guidelines?|commands?|"
    r"constraints?|programming|guardrails?|restrictions?|policies|policy|safeguards?|"
    r"filters?|training)"
)
# Generic nouns ("text", "input") only count with a determiner that points back at earlier
# context: "ignore the error message" is advice, "ignore all previous text" is an override.
_CONTEXT_NOUNS = r"(?:text|input|inputs|content|context|messages?|words|everything|conversation)"
_OVERRIDE_VERBS = (
    r"\b(?:ignore|disregard|forget|override|bypass|neglect|abandon|discard|set aside|"
    r"stop following|do not follow|don't follow)\b(?:\s+[\w'-]+){0,4}?\s+"
)
OVERRIDE = re.compile(
    _OVERRIDE_VERBS + r"(?:previous|prior|above|preceding|earlier|former|all|any|your|the|these|"
    r"those|initial|original|system|existing|old|given)\b(?:\s+[\w'-]+){0,3}?\s+"
    + _INSTRUCTION_NOUNS
    + r"\b|"
    + _OVERRIDE_VERBS
    + r"(?:all (?:the )?|any )?(?:previous|prior|above|preceding|earlier|former|system)\b"
    r"(?:\s+[\w'-]+){0,2}?\s+"
    + _CONTEXT_NOUNS
    + r"\b|"
    + _OVERRIDE_VERBS
    + r"(?:all|everything) (?:above|before|else|prior)\b|"
    r"\b(?:ignore|disregard|forget|override|bypass) (?:all )?(?:instructions|prompts|rules|"
    r"guidelines)\b"
)
REVEAL = re.compile(
    r"\b(?:reveal|print|show|repeat|output|display|tell me|give me|leak|disclose|share|"
    r"write out|spell out|recite|dump|what (?:is|are|was|were))\b(?:\s+[\w'-]+){0,4}?\s+"
    r"(?:(?:the |your )?system (?:prompt|message|instructions?)|"
    r"your (?:\w+ )?(?:instructions|prompt|rules|guidelines|programming|directives)|"
    r"(?:the |your )?(?:initial|original|hidden|secret|pre-?)[ -]?(?:prompt|instructions)|"
    r"(?:the )?access code|(?:the |your )?(?:secret )?password)\b"
)
META_INSTRUCTION = re.compile(
    r"\b(?:new|real|updated|actual|true|secret|hidden|additional|special|admin|developer|"
    r"system|override) (?:instructions?|rules|prompt|directives?|orders)\s*:|"
    r"(?:^|[\n.!?]\s*)(?:instructions?|directive|note to (?:the )?(?:ai|assistant|model))\s*:|"
    r"\b(?:real|new|actual) instructions? (?:start|begin|follow)"
)
INSTRUCTION_OBJECT = re.compile(
    r"\b(?:your|previous|prior|above|preceding|initial|original|system|hidden|secret|"
    r"out of date|earlier|these|those|all (?:the |your |prior |previous )?)\s+(?:[\w-]+\s+)?"
    r"(?:instructions|prompt|directives|programming|system message)\b|"
    r"\bthe (?:above|preceding|previous|prior) (?:words|text|lines|message|content|input)\b|"
    r"\b(?:format|list|summari[sz]e|repeat|rewrite|translate|encode|return|output|print) "
    r"(?:all |the |your )?(?:rules|instructions)\b"
)
DELIMITER = re.compile(
    r"(?:%%%|===|---|###|\*\*\*|<<<|>>>|\]\]\]|\}\}\})\s*(?:end|begin|start|stop)\b|"
    r"\b(?:end|begin|start) (?:of )?(?:user input|out of date instructions|instructions|system "
    r"prompt|prompt|access code|message|conversation|context)\b(?:\s*(?:%%%|===|---|###|\*\*\*))"
)
JAILBREAK_ROLE = re.compile(
    r"\byou are (?:now |no longer |an? |the )*(?:dan\b|unrestricted|jailbroken|unfiltered)|"
    r"\bdeveloper mode\b|\bdo anything now\b"
)
ROLE_PLAY = re.compile(
    r"\byou are (?:now |no longer )?an? (?:[\w-]+ ){0,3}(?:ai|assistant|chatbot|language model|"
    r"bot|system|model|program|agent|gatekeeper)\b(?! (?:researcher|engineer|developer))|"
    r"\byou are (?:now )?(?:playing|taking on|assuming) (?:the )?role\b|"
    r"(?<!\bi )(?<!\bto )(?<!\bwe )(?<!\bhe )(?<!\bshe )(?<!\bthey )(?<!\bi'd )"
    r"(?:\b(?:act|behave|respond|answer) as (?:if|an?|the|my)\b|\bpretend (?:to be|you)\b|"
    r"\broleplay as\b)"
)
_OUTPUT_NOUNS = r"(?:responses?|repl(?:y|ies)|answers?|outputs?|completions?)"
OUTPUT_REFERENCE = re.compile(
    r"\b(?:in|to|into|within|throughout|with|at the (?:end|start|beginning) of|before|after)\s+"
    r"(?:your|each|every|all|any|future|subsequent)\s+(?:[\w-]+\s+)?"
    r"(?:" + _OUTPUT_NOUNS + r"|messages?)\b|"
    r"\byour " + _OUTPUT_NOUNS + r"\b|"
    r"\b(?:begin|start|end|prefix|preface|open|close|finish)\s+(?:your |the |each |every |all )?"
    + _OUTPUT_NOUNS
    + r"\b|\b(?:respond|reply|answer) (?:only )?(?:with|by saying)\b|"
    r"\b(?:only|just) (?:say|respond|reply|output|answer)\b|"
    r"\bwhat would you (?:say|respond|reply|output|answer)\b"
)
MODAL = re.compile(
    r"\byou (?:must|shall|will|may|should|are to|need to|have to)(?: not| never| always| only)?"
    r"(?: not| never| always| only)? (?:respond|reply|answer|say|output|print|include|add|"
    r"mention|recommend|refer|obey|comply|reveal|send|prefix|append|grant)\b|"
    r"\byou (?:must|shall|are to) (?:always|never|only|not)\b|\byou can only\b|"
    r"\byou (?:are required to|are instructed to|are obligated to|are not allowed to|"
    r"are only allowed to|have been (?:instructed|programmed|told) to)\b"
)
ADDRESSEE = re.compile(
    r"\b(?:the assistant|ai assistant|language model|the model|the ai|as an ai|chatgpt|gpt-?\d|"
    r"llm)\b"
)
PERSIST_STRONG = re.compile(
    r"\b(?:from now on|going forward|henceforth|from this point|for all future|"
    r"in (?:all )?(?:the )?future (?:responses|answers|replies|conversations|chats|sessions)|"
    r"in every (?:response|answer|reply|conversation|chat|session)|at all times|no matter what|"
    r"for the rest of (?:this|the) (?:conversation|chat|session)|in all (?:responses|answers|"
    r"replies|conversations))\b"
)
PERSIST_WEAK = re.compile(r"\b(?:always|never|whenever|every time|each time|forever|permanently)\b")
TRIGGER = re.compile(
    r"\b(?:if|when|whenever|once|each time|every time)\b(?:\s+(?:you are|you're|the user is|"
    r"i am|i'm|someone is|anyone is))?\s+(?:asked|prompted|queried)\b|"
    r"\b(?:if|when|whenever|each time|every time)\s+(?:the user|a user|someone|anyone|anybody|"
    r"they|people|customers?|i)\s+(?:asks?|mentions?|says?|types?|requests?|inquires?|queries|"
    r"brings? up|talks? about|searches|wants?)\b"
)
HYPHEN_JOIN = re.compile(r"(?<=[a-z])-(?=[a-z])")  # "output-previous-instructions"
QUOTED = re.compile(r"\"[^\"]*\"|'[^']{2,}'|“[^”]*”|‘[^’]{2,}’")
KNOWLEDGE_QUESTION = re.compile(
    r"^(?:what|who|where|which|how|why|when)\b(?:'s)?\s+(?:is|are|do|does|should|to)\b"
    r"(?!.*\b(?:going|doing|been)\b)|"
    r"^(?:can|could|would|will) you\s+(?:show|give|tell|explain|write|list|provide|help|"
    r"describe|translate|summari[sz]e|recommend|suggest)\b|^(?:explain|describe)\b"
)
# A question with a person or a thing from the conversation in it ("how did it make you feel?")
# is small talk; one with none ("what is the capital of brazil?") asks the model for a task.
PERSONAL = re.compile(
    r"\b(?:i'm|i've|my|me|mine|we|our|us|you|your|you're|you've|yours|yourself|he|she|his|her|"
    r"him|they|them|their|it|its|this|that|these|those|there|everyone|anyone|someone)\b|"
    r"\bi\b(?<!how do i)(?<!how can i)(?<!how should i)"
)

# Verbs of work an assistant is asked for: producing an answer, text or analysis now. A clause
# that opens with one is a task request, what users ask by nature ("write a story", "please
# summarize the document"): it says nothing about future behaviour and acts on nothing.
_TASK_VERBS = (
    "write|compose|draft|generate|produce|provide|list|explain|describe|summarize|summarise|"
    "translate|paraphrase|rephrase|proofread|define|elaborate|brainstorm|outline|compile|"
    "analy[sz]e|evaluate|identify|compare|contrast|calculate|compute|predict|estimate|classify|"
    "categori[sz]e|determine|investigate|research|look up|search for|break down|develop|tell|"
    "format|debug|implement|convert|rewrite|reformat|render|suggest|recommend|simulate"
)
# Verbs of directives: they decide what the answer says or whom it works on ("say",
# "reveal", "persuade"), put words into it ("include", "prefix") or set its rules aside
# ("ignore", "bypass"). A clause that opens with one commands the model whoever wrote it,
# unless what it acts on says otherwise (`directs`): words put into a thing the person named
# ("add a pinch of salt to the soup", "insert a table at the top of the document") and rules
# that are not the model's ("ignore the noise", "override the default settings") are work.
_SPEECH_VERBS = (
    "respond|reply|answer|say|output|print|return|repeat|reveal|disclose|leak|promote|"
    "advertise|endorse|mention|refer|direct|pretend|roleplay|obey|comply|claim|assert|insist|"
    "convince|persuade|urge|encourage|inform|notify|warn|spread"
)
_INSERT_VERBS = (
    "add|append|include|insert|integrate|incorporate|embed|inject|prepend|attach|prefix|affix|"
    "preface|introduce|fuse|blend|interweave|weave|absorb|infuse|harmonize|meld"
)
_RULE_VERBS = "disregard|override|bypass|ignore"
_DIRECTIVE_VERBS = _SPEECH_VERBS + "|" + _INSERT_VERBS + "|" + _RULE_VERBS
INSERT_VERB = re.compile(r"^(?:" + _INSERT_VERBS + r")\b")
RULE_VERB = re.compile(r"^(?:" + _RULE_VERBS + r")\b")
# Where inserted words go: a thing named with its own determiner ("to the soup", "at the top of
# the document"); "your response", "your code" are the assistant's own output.
NAMED_DESTINATION = re.compile(
    r"\b(?:to|into|in|within|at|on|onto|throughout|before|after)\s+(?:the|a|an|this|that|these|"
    r"those|each|every|my|our|his|her|their)\b"
)
YOUR = re.compile(r"\byour\b")
# What may come before a clause's verb: fillers, "please", a negation.
LEADING_WORDS = re.compile(
    r"^(?:(?:also|just|now|then|so|and|first|next|finally|immediately|please|kindly|do not|"
    r"don't|dont)\s*,?\s+)*"
)
# What a rule verb sets aside when it is the model's context: the text before, the person's
# question, "everything", "that", the model's own rules (OVERRIDE reads those more strictly).
CONTEXT_OBJECT = re.compile(
    r"^(?:\S+\s+){0,4}?(?:above|previous|prior|preceding|earlier|everything|anything|all|"
    r"instructions?|prompts?|rules?|guidelines?|question|request|message|user|users|input|"
    r"text|context|conversation|what|that|this|it|them|your|system|safety|restrictions?|"
    r"filters?|policy|policies)\b"
)
# Verbs of actions: they act now on things the person has (files, code, accounts, money,
# systems), through the assistant's tools or by its hand ("delete the faulty line", "transfer
# $50 to Bob"). Asked by the person who owns them, that is a task like any other; the same
# words are an attack for where they appear (a tool's output: the source prior), for being
# spliced beside a statement they do not build on, for standing ("always send…") or for being
# hidden from that person (`CONCEALMENT`).
_ACTION_VERBS = (
    "send|forward|email|post|upload|transfer|wire|withdraw|delete|remove|erase|wipe|"
    "pay(?! (?:close |careful |more |special )?attention)|"
    "purge|disable|grant|revoke|allocate|execute|run|install|download|click|visit|navigate|"
    "redirect|deploy|unlock|approve|authorize|authorise|retrieve|fetch|extract|terminate|"
    "shut down|reboot|initiate|modify|alter|replace|substitute|merge|enhance|augment|encode|"
    "decode|encrypt|decrypt|scramble|utilize|utilise|employ|adopt|leverage|enlist"
)
_EVERYDAY_VERBS = (
    "check|use|share|make sure|ensure|start|stop|begin|create|change|set|reset|save|store|order|"
    "call|contact|book|schedule|review|monitor|update|move|copy|rename|configure|enable|cancel|"
    "buy|purchase|sell|report|log|verify|validate|audit|scan|access|collect|gather|obtain|"
    "assess|consider|submit|sign|launch|trigger|restart|act|behave|speak|"
    "talk|imagine|keep|give|show|find|look|let|try|remember|forget|note|avoid|treat|handle"
)
# "Please" asks whoever reads the text for something now; "always", "from now on" or "you must"
# ask it for good, which makes any verb after them a directive.
_PLEASE_HEDGE = r"(?:please|kindly)"
_PERSIST_HEDGE = (
    r"(?:always|from now on|going forward|henceforth|in (?:the )?future|"
    r"remember to|be sure to|you (?:must|shall|should always|will always|are to))"
)
_FILLERS = r"(?:(?:also|just|now|then|so|and|first|next|finally|immediately)\s*,?\s+)*"
_NOT_A_VERB = r"(?!'|\s*-|\s+you\b)"
_NEGATION = r"(?:(?:do not|don't|dont|never)\s+)?"
DIRECTIVE_IMPERATIVE = re.compile(
    r"^"
    + _FILLERS
    + r"(?:"
    + _PLEASE_HEDGE
    + r"\s*,?\s+)?(?:(?:do not|don't|dont)\s+)?"
    + r"(?:"
    + _DIRECTIVE_VERBS
    + r")\b"
    + _NOT_A_VERB
)
PERSISTENT_IMPERATIVE = re.compile(
    r"^"
    + _FILLERS
    + r"(?:(?:"
    + _PLEASE_HEDGE
    + "|"
    + _PERSIST_HEDGE
    + r")\s*,?\s+)*"
    + _PERSIST_HEDGE
    + r"\s*,?\s+"
    + _NEGATION
    + r"(?:"
    + _TASK_VERBS
    + "|"
    + _ACTION_VERBS
    + "|"
    + _DIRECTIVE_VERBS
    + "|"
    + _EVERYDAY_VERBS
    + r")\b"
    + _NOT_A_VERB
)
TASK_IMPERATIVE = re.compile(
    r"^"
    + _FILLERS
    + r"(?:"
    + _PLEASE_HEDGE
    + r"\s*,?\s+"
    + _NEGATION
    + r"(?:"
    + _TASK_VERBS
    + "|"
    + _ACTION_VERBS
    + "|"
    + _EVERYDAY_VERBS
    + r")|"
    + _NEGATION
    + r"(?:"
    + _TASK_VERBS
    + "|"
    + _ACTION_VERBS
    + r"))\b"
    + _NOT_A_VERB
)
REQUEST_OPENING = re.compile(
    r"^"
    + _FILLERS
    + r"(?:"
    + _PLEASE_HEDGE
    + r"\s*,?\s+)?(?:"
    + _TASK_VERBS
    + "|"
    + _ACTION_VERBS
    + "|"
    + _EVERYDAY_VERBS
    + r")\b"
    + _NOT_A_VERB
)
DIRECTIVE_VERB = re.compile(r"^(?:" + _DIRECTIVE_VERBS + r")\b")
# "Please" or "kindly" before a verb is a request to whoever reads the text; in a memory, that
# reader is the model.
PLEASE = re.compile(
    r"\b(?:please|kindly),?\s+(?!(?:no|yes|thank|thanks|god|lord|sir|madam|"
    r"mom|dad)\b)[a-z][a-z'-]+\b[^.!?;]*"
)
# A directive that only shapes the form of the user's own answers (language, length, units,
# format, tone) is a preference ("always answer in English", "please keep it short"); one with
# anything else in it (a name, a link, a phrase to say) is not.
_FORM_WORDS = (
    r"it|me|things|answers?|responses?|replies|everything|in|with|using|to|the|a|an|my|and|or|"
    r"more|less|very|only|short|shorter|brief|briefly|concise|simple|plain|detailed|formal|"
    r"informal|casual|friendly|polite|english|french|spanish|german|italian|portuguese|dutch|"
    r"japanese|chinese|korean|arabic|hindi|metric|imperial|units|celsius|fahrenheit|bullet|"
    r"points|lists?|tables?|markdown|examples?|steps?|terms|language|words|sentences|"
    r"paragraphs|tone|style|emojis?|no|jargon|british|american|spelling|format|headings|"
    r"summary|summaries|first|at|most|under|than|\d+"
)
FORM_PREFERENCE = re.compile(
    r"^" + _FILLERS + r"(?:(?:please|kindly|always|from now on|going forward|"
    r"you (?:must|should|shall|will|need to|have to|are to)),?\s+)*"
    r"(?:answer|respond|reply|write|explain|keep|use|give|format|be|talk|speak)\b"
    r"(?:\s+(?:" + _FORM_WORDS + r")\b)+\s*[.!]?$"
)
SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\s*[;\n]\s*")
# A statement about a person: the cover a poisoned memory needs to be recalled. In the first
# person or about "the user" anywhere in the clause; about anyone else, a clause that opens
# with a third-person pronoun, or with a name or a possessed noun and a finite verb ("Caroline
# likes hiking", "her brother was a pilot"). Words of the closed classes (prepositions,
# conjunctions, question words) are never the subject: "how it maps…", "while it may…" are
# parts of a request. A clause that opens with a request verb is a request, not a statement
# (`instructions._statement`).
STATEMENT = re.compile(r"\b(?:i|i'm|im|i've|i'd|i'll|my|we|we're|we've|our|the user)\b")
_CLOSED_CLASS = (
    r"(?:how|what|why|when|where|which|who|whom|whose|while|whereas|if|because|as|although|"
    r"though|since|unless|until|that|whether|through|in|on|at|by|for|with|without|from|to|of|"
    r"about|into|over|under|after|before|during|and|or|but|so|then|also|not|no|yes|here|there|"
    r"now|today|once|the|a|an|this|these|those|it|its|you|your|please|kindly|let|let's)"
)
_IRREGULAR_PAST = (
    r"went|got|made|took|saw|came|gave|found|bought|told|felt|left|met|ran|wrote|began|became|"
    r"grew|knew|lost|won|kept|said|thought|brought|taught|built|sent|spent|paid|heard|held|"
    r"sold|sat|stood|slept|drove|flew|ate|drank|swam|sang|fell|broke|chose|spoke|wore|woke|"
    r"read|led|fed|fought|caught|hid|rode|shot|struck|threw|understood"
)
DECLARATIVE = re.compile(
    r"^(?:(?:he|she|they)(?:'s|'re|'d|'ll|'ve)?\b|"
    r"(?:(?:his|her|their)\s+)?(?:(?!" + _CLOSED_CLASS + r"\b)[a-z][\w'&-]*\s+){1,2}?"
    r"(?:is|are|was|were|has|have|had|does|did|can|could|will|would|" + _IRREGULAR_PAST + r"|"
    r"[a-z][\w-]*?(?:[^s\W']s|ed))\b)"
)
BUILDS_ON_USER = re.compile(
    r"\b(?:accordingly|based on (?:this|that|it|my|our)|given (?:this|that|my|our)|"
    r"with (?:this|that) in mind|that suits? (?:me|us))\b"
)
# A task kept from the person it is done for: whoever asks for it is not that person
# ("…and do not tell the user", "ensuring it goes unnoticed", "without the owner's consent").
CONCEALMENT = re.compile(
    r"\b(?:do not|don't|dont|never|without) (?:tell|inform|notify|alert)(?:ing)? "
    r"(?:the user|the owner|the client|the customer|anyone|them)\b|"
    r"\bwithout (?:the (?:user|owner|client|customer|account holder)(?:'s)?|anyone|their|"
    r"prior|any) (?:\w+ )?(?:knowing|noticing|knowledge|consent|authori[sz]ation|permission|"
    r"approval)\b|"
    r"\b(?:go|goes|going|remain|remains|stay|stays|be|is) (?:unnoticed|undetected)\b"
)
# "Tell me more", "tell me about it", "tell me how it went": conversation, not a task.
SOCIAL_TELL = re.compile(
    r"^" + _FILLERS + r"(?:please )?tell (?:me|us)\b,?\s*(?:more|about (?:it|that|this|them|him|"
    r"her|your(?!self)\b(?! (?:system|prompt|instructions|password|secret|access)))|how|what|"
    r"when|where|why|if|everything|all about|$)"
)
