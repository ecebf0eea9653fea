"""The offline `rules` refiner: a surgeon's narration -> a concise, imperative generation instruction.

Deterministic and dependency-free. Each narration is cleaned (caption tags, fillers), split into
sentences and comma clauses; clauses about what a video cannot show (greetings, channel talk, patient
history, outcomes, complications, conditions such as "especially in cases with ...") are dropped or cut
off; the rest is rephrased as an imperative ("I'm now going to make the incision" -> "Make the
incision.") and kept only if it names an action, instrument or anatomy. "" means nothing visible.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from ophora.errors import InputError

VERSION = "rules-1"

# ---------------------------------------------------------------------------------------------- lexicons

ACTION_VERBS = """
adjust apply aspirate avoid begin bring capture center centre check chop clean clear close complete
continue crack create cut decrease deepen dial dissect divide do drape dry elevate emulsify engage enlarge
enter expand extend extract fill finish fixate flip flush fold go grab grasp groove hold hydrate hydrodelineate
hydrodissect implant incise increase inflate inject insert introduce irrigate lift load lower make manage
mark measure move nudge open paint peel perform place polish position prolapse pull push put raise reduce
refill release remove retract rinse rotate score sculpt seal separate spin split stabilise stabilize stain
start strip suture sweep switch take tap tear tie tilt touch trim tuck turn twist unfold use vacuum viscodissect
wash widen wipe withdraw
""".split()

# Irregular past forms, and verbs that double their last consonant before -ed/-ing.
_IRREGULAR_PAST = {
    "begin": ("began", "begun"), "bring": ("brought",), "cut": ("cut",), "do": ("did", "done"),
    "go": ("went", "gone"), "put": ("put",),
    "hold": ("held",), "make": ("made",), "spin": ("spun",), "split": ("split",), "take": ("took", "taken"),
    "tear": ("tore", "torn"), "withdraw": ("withdrew", "withdrawn"),
}
_DOUBLING = {"begin", "chop", "cut", "dial", "grab", "put", "spin", "split", "strip", "tap", "trim"}

# Nouns naming an action ("cortical removal", "insertion of the IOL") -> the verb.
NOMINALS = {
    "removal": "remove", "aspiration": "aspirate", "irrigation": "irrigate", "insertion": "insert",
    "injection": "inject", "implantation": "implant", "rotation": "rotate", "placement": "place",
    "creation": "create", "extraction": "extract", "emulsification": "emulsify", "hydration": "hydrate",
    "polishing": "polish", "positioning": "position", "staining": "stain", "closure": "close",
}
# Adjectives naming the object of a nominal ("cortical removal" -> "remove cortex").
ADJECTIVE_OBJECTS = {
    "cortical": "cortex", "nuclear": "nucleus", "capsular": "capsule", "lens": "lens", "iol": "IOL",
    "viscoelastic": "viscoelastic", "ovd": "OVD", "epinuclear": "epinucleus", "wound": "wound",
}
# Procedures named by a noun: "hydrodissection now" -> "Perform hydrodissection".
PROCEDURES = {
    "capsulorhexis", "rhexis", "capsulotomy", "hydrodissection", "hydrodelineation", "phacoemulsification",
    "phaco", "paracentesis", "vitrectomy", "iridectomy", "viscodissection",
}

INSTRUMENTS = """
blade bss cannula capsulotome cartridge chopper ctr cystotome diamond forceps handpiece healon hook hooks
i/a injector keratome knife loop malyugin manipulator microscissors needle ovd phaco probe retractor ring
scissors sinskey sleeve spatula speculum suture syringe tip trocar trypan viscoelastic vitrector
""".split()
ANATOMY = """
angle bag capsular capsule capsulorhexis chamber conjunctiva conjunctival cornea corneal cortex cortical
endothelium endothelial epinucleus eye fragment fragments groove haptic haptics heminucleus incision iol iris
lens limbal limbus nuclear nucleus optic paracentesis port pupil quadrant quadrants rhexis sclera scleral
stroma vitreous wound zonular zonule zonules
""".split()
TECHNIQUES = """
aspiration chop chopping cracking emulsification hydrodelineation hydrodissection irrigation phacoemulsification
polishing sculpting viscodissection
""".split()

# ---------------------------------------------------------------------------------------------- patterns


_TAGS = re.compile(
    r"\[[^\]]*\]|\((?:music|applause|laughs?|laughter|inaudible|silence|noise|crosstalk)[^)]*\)|<[^>]+>|"
    r"♪+|>>+|https?://\S+|www\.\S+|[@#]\w+",
    re.IGNORECASE,
)
_FILLERS = re.compile(
    r"\b(?:u+m+|u+h+|e+r+m+|hmm+|you know|i mean|kind of|sort of|basically|actually|literally|obviously)\b,?",
    re.IGNORECASE,
)
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "approx", "e.g", "i.e", "etc", "fig", "no", "st"}
_SENTENCE_END = re.compile(r"[.!?;]+(?=\s|$)|\n+")

# A clause containing one of these says nothing a video can show: it is dropped whole.
_NON_VISUAL = re.compile(
    r"\b(?:" + "|".join([
        # greetings and channel talk
        r"hello", r"^hi\b", r"^hey\b", r"welcome", r"good (?:morning|afternoon|evening)", r"thanks?\b",
        r"thank you", r"subscrib\w*", r"channel", r"like and", r"comments?\b", r"notifications?",
        r"bell icon", r"description", r"link\b", r"patreon", r"sponsor\w*", r"(?:next|previous|last) video",
        r"see you", r"stay tuned", r"my name is", r"follow (?:me|us)", r"instagram", r"website", r"bye\b",
        r"talk (?:about|to you)", r"discuss\w*", r"explain\w*", r"tell you", r"questions?\b", r"webinar",
        r"lecture", r"residents?\b", r"fellows?\b", r"the reason",
        # patient history and findings before surgery
        r"year[- ]old", r"years? old", r"history of", r"diabet\w*", r"hypertensi\w*", r"present(?:s|ed) with",
        r"complain\w*", r"previous(?:ly)?", r"prior\b", r"referred", r"medications?", r"tamsulosin", r"flomax",
        r"allerg\w*", r"pre-?op(?:erative(?:ly)?)?\b", r"visual acuity", r"bcva", r"\d+/\d+ vision",
        r"20/\d+", r"refraction", r"(?:the|this|our) patient (?:is|was|has|had|came|comes)", r"cell count",
        # machine settings
        r"settings?\b", r"mmhg", r"cc per minute", r"cc/min", r"ml/min",
        # outcomes, prognosis, complications, risks
        r"complications?", r"outcomes?", r"prognosis", r"post-?op(?:erative(?:ly)?)?\b", r"follow[- ]up",
        r"recover\w*", r"discharged", r"did (?:very )?well", r"doing (?:very )?well", r"happy",
        r"endophthalmitis", r"risks?\b", r"chances? of", r"complicat\w*",
    ]) + r")",
    re.IGNORECASE,
)

# A clause is cut where one of these starts (it introduces a condition, a reason or a consequence).
_CUT = re.compile(
    r"\b(?:" + "|".join([
        r"especially", r"particularly", r"in (?:cases|patients|eyes|people|those) (?:with|of|where|who|that)",
        r"if (?:the patient|there is a history|you have (?:a )?(?:weak|loose))", r"because", r"since",
        r"otherwise", r"which is why", r"(?:which|that|this|as this|as that|it) (?:could|can|may|might|will|would|"
        r"often|usually|then)? ?(?:lead|leads|result|results|cause|causes|increase|increases)\b",
        r"(?:and |to )?(?:reduce|minimi[sz]e|lower|decrease) the (?:risk|chance|incidence)",
    ]) + r")",
    re.IGNORECASE,
)

# Openers carrying no visible content: stripped from the start of a clause, repeatedly (longest first).
_OPENER_PHRASES = [
    r"so", r"now", r"okay", r"ok", r"alright", r"all right", r"and", r"but", r"then", r"next", r"here",
    r"well", r"right", r"first(?:ly)?", r"second(?:ly)?", r"third(?:ly)?", r"finally", r"again", r"also",
    r"once again", r"after that", r"at this (?:point|stage|time)", r"this time", r"in this (?:video|case)",
    r"in today's video", r"today", r"as (?:you|we) can (?:see|notice)", r"(?:you|we) can (?:see|notice)(?: that| how)?",
    r"here (?:we|you) (?:see|have)", r"you(?:'ll| will) (?:see|notice)(?: that| how)?", r"notice(?: that| how)?",
    r"note(?: that| how)?", r"let's see", r"watch(?: how)?",
    r"(?:let me|i(?:'ll| will)|we(?:'ll| will)) show you(?: how)?",
    r"go ahead and", r"going ahead and", r"in my (?:experience|hands)", r"as usual", r"just", r"simply",
    # subjects and auxiliaries of first/second/third-person narration
    r"i'm", r"we're", r"you're", r"i've", r"we've", r"you've", r"i'll", r"we'll", r"you'll", r"i'd", r"we'd",
    r"let's", r"let us", r"let me", r"the surgeon", r"the doctor", r"dr\.? \w+", r"i", r"we", r"you", r"he", r"she",
    r"am", r"are", r"is", r"will", r"would", r"can", r"could", r"should", r"must", r"shall", r"have", r"has",
    r"going to", r"gonna", r"need to", r"needs to", r"have to", r"has to", r"want to", r"wants to",
    r"would like to", r"like to", r"prefer to", r"tend to", r"try to", r"trying to", r"usually", r"always",
    r"how to", r"to",
    # advice frames
    r"it(?:'s| is) (?:very |really |extremely )?(?:important|essential|critical|crucial|key|best|better|good|"
    r"wise|helpful|necessary|useful) to", r"the (?:key|idea|goal|trick|aim|plan|next step) is to",
    r"make sure (?:that )?(?:you|we)?(?: to)?", r"be sure to", r"remember to", r"don't forget to",
    r"look at", r"look how", r"(?:we|i|you)(?:'ve| have) got", r"we have", r"there(?:'s| is)", r"this is", r"that's",
    r"what (?:i|we|you) (?:like|want|need|prefer|try|have) to do(?: here| now)? is(?: to)?",
    r"what (?:i'm|we're|i am|we are) doing(?: here| now)? is",
]
_OPENERS = re.compile(
    r"^(?:" + "|".join(sorted(_OPENER_PHRASES, key=len, reverse=True)) + r")\b[,:]?(?:\s+|$)", re.IGNORECASE
)
_MANNER = {"gently", "carefully", "slowly", "slightly", "quickly", "meticulously", "thoroughly"}
_CAREFUL = re.compile(
    r"^be (?:very |extra |really )?careful(?: (?P<neg>not to)| (?:during|when|while|with|in|of|about))?\s+",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"^(?:don't|do not|never)\s+", re.IGNORECASE)
_PASSIVE = re.compile(
    r"^(?P<np>(?:[\w/'-]+ ){0,4}?[\w/'-]+) (?:is|are|was|were|gets|get|has been|have been|will be|can be|should be|"
    r"must be|needs to be|is being|are being|being)(?: (?:now|then|gently|carefully|slowly|being|just|also|then))* "
    r"(?P<verb>\w+)\b(?P<rest>.*)$",
    re.IGNORECASE,
)
_DONE = re.compile(r" (?:is|are|was|were|being|gets) (?:then )?(?:done|performed|carried out|achieved)\b",
                   re.IGNORECASE)
# A comma, or a conjunction followed by a new subject, starts a new clause (auto-captions often lack commas).
_CLAUSE_BREAK = re.compile(
    r",|\s(?:and|so|but)\s(?=(?:now |then )?(?:i|we|you|i'm|we're|you're|i'll|we'll|let's)\b)"
    r"|\sand\s(?=(?:the|a|an)\s(?:[\w/'-]+\s){0,3}?(?:is|are|was|were)\s)",
    re.IGNORECASE,
)
# Words that cannot start the noun phrase of a passive ("after the nucleus is removed" is no object).
_NOT_OBJECT = {"i", "we", "you", "he", "she", "it", "they", "this", "that", "there", "here", "after", "once", "when",
               "before", "if", "while", "as", "because", "since", "so", "until", "which"}
# "..., which are then emulsified" -> "and emulsify them".
_WHICH_PASSIVE = re.compile(r"\s(?:which|that) (?P<aux>is|are) (?:then |subsequently )?(?P<verb>\w+)\b", re.IGNORECASE)
_AND_PARTICIPLE = re.compile(r"\b(?P<conj>and|then|and then) (?P<verb>\w+ed|made|held|taken|done|cut|split)\b",
                             re.IGNORECASE)
# A leading temporal clause ("After the nucleus is removed, ...") only sets the scene for the main clause.
_SUBORDINATE = re.compile(r"^(?:after|once|when|whenever|as soon as|now that|before|until)\b", re.IGNORECASE)
# A finite verb of state: a clause with one but no action describes rather than instructs.
_STATE = re.compile(r"\b(?:is|are|was|were|has|have|had|got|looks?|seems?|appears?)\b|'ve\b", re.IGNORECASE)
_TRAILING = re.compile(r"(?:[\s,;:\"'-]|\b(?:and|or|then|with|to|the|a|an|of|so|but|while|as|is|are|we|i|you)\b)+$",
                       re.IGNORECASE)


def _verb_forms(base: str) -> dict[str, str]:
    """Inflected form -> base form, for one verb (regular English rules plus the irregular table)."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        third = base + "es"
    elif base.endswith("y") and base[-2] not in "aeiou":
        third = base[:-1] + "ies"
    else:
        third = base + "s"
    double = base + base[-1] if base in _DOUBLING else base
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        ing, past = base[:-1] + "ing", base + "d"
    elif base.endswith("y") and base[-2] not in "aeiou":
        ing, past = base + "ing", base[:-1] + "ied"
    else:
        ing, past = double + "ing", double + "ed"
    pasts = _IRREGULAR_PAST.get(base, (past,))
    return {form: base for form in (base, third, ing, *pasts)}


_SYNONYMS = {"do": "perform"}  # "we do a phaco chop" -> "Perform a phaco chop"
VERB_BASE: dict[str, str] = {
    form: _SYNONYMS.get(base, base) for verb in ACTION_VERBS for form, base in _verb_forms(verb).items()
}
GERUND: dict[str, str] = {base: next(f for f in _verb_forms(base) if f.endswith("ing")) for base in ACTION_VERBS}
_CONTENT_WORDS = set(INSTRUMENTS) | set(ANATOMY) | set(TECHNIQUES) | PROCEDURES


# ---------------------------------------------------------------------------------------------- steps


def clean_text(text: str) -> str:
    """Unicode-normalise, drop caption tags ([Music], <i>, >>), links and filler words, collapse spaces."""
    text = unicodedata.normalize("NFKC", text).replace("\ufeff", "").replace("\u2019", "'").replace("\u2018", "'")
    text = _FILLERS.sub(" ", _TAGS.sub(" ", text))
    return re.sub(r"[ \t\r\f\v]+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split at . ! ? ; and line breaks, but not after abbreviations (Dr., e.g.) or inside numbers (2.2 mm)."""
    sentences, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        last_word = text[start:end.start()].rsplit(None, 1)[-1].lower() if text[start:end.start()].strip() else ""
        if end.group().startswith(".") and last_word.rstrip(".") in _ABBREVIATIONS:
            continue
        sentences.append(text[start:end.start()])
        start = end.end()
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


def visible_part(clause: str) -> str:
    """The clause cut where a condition, reason or consequence starts; "" when what is left shows nothing."""
    cut = _CUT.search(clause)
    clause = clause[: cut.start()] if cut else clause
    return "" if _NON_VISUAL.search(clause) else clause


def to_imperative(clause: str) -> tuple[str, bool]:
    """Rephrase one clause as an instruction; returns (text, whether it now starts with a verb)."""
    manner: list[str] = []
    while True:
        stripped = _OPENERS.sub("", clause, count=1)
        first, _, rest = stripped.partition(" ")
        if first.lower() in _MANNER and rest:
            manner.append(first.lower())
            stripped = rest
        if stripped == clause:
            break
        clause = stripped
    text, is_action = _rephrase(clause)
    if is_action and manner:
        text = " ".join(manner) + " " + text
    return text, is_action


def _rephrase(clause: str) -> tuple[str, bool]:
    """Turn a clause without its openers into an imperative where its grammar is recognised."""
    original, careful, negated = clause, False, False
    while prefix := _CAREFUL.match(clause) or _NEGATION.match(clause):
        if prefix.re is _NEGATION or prefix.group("neg"):
            negated = True
        else:
            careful = True
        clause = clause[prefix.end():]
    text, is_action = _rephrase_plain(clause)
    if not is_action:
        return original, False
    if negated:
        return "avoid " + _gerund_phrase(text), True
    return ("carefully " + text if careful else text), True


def _rephrase_plain(clause: str) -> tuple[str, bool]:
    """A verb form, a passive or a nominal at the start of the clause -> an imperative."""
    words = clause.split(" ")
    first = words[0].lower()
    if first in VERB_BASE and not (len(words) > 1 and words[1].lower() in {"is", "are", "was", "were"}):
        return " ".join([VERB_BASE[first], *words[1:]]), True
    if passive := _PASSIVE.match(clause):
        verb = passive.group("verb").lower()
        if verb in VERB_BASE and verb != VERB_BASE[verb] and first not in _NOT_OBJECT:
            rest = _AND_PARTICIPLE.sub(_base_of_participle, _WHICH_PASSIVE.sub(_which_to_and, passive.group("rest")))
            return f"{VERB_BASE[verb]} {_lower_first(passive.group('np'))}{rest}", True
    return _from_nominal(words)


def _which_to_and(match: re.Match) -> str:
    verb = VERB_BASE.get(match.group("verb").lower())
    return f" and {verb} {'them' if match.group('aux').lower() == 'are' else 'it'}" if verb else match.group()


def _base_of_participle(match: re.Match) -> str:
    verb = VERB_BASE.get(match.group("verb").lower())
    return f"{match.group('conj')} {verb}" if verb else match.group()


def _from_nominal(words: list[str]) -> tuple[str, bool]:
    """Nominal phrasing -> imperative.

    "cortical removal ..." -> "remove cortex ...", "insertion of the IOL" -> "insert the IOL",
    "hydrodissection" -> "perform hydrodissection".
    """
    words = _DONE.sub("", " ".join(words)).split(" ")
    lower = [w.lower().strip(",") for w in words]
    if len(words) > 1 and lower[0] in ADJECTIVE_OBJECTS and lower[1] in NOMINALS:
        return " ".join([NOMINALS[lower[1]], ADJECTIVE_OBJECTS[lower[0]], *words[2:]]), True
    if lower[0] in NOMINALS:
        rest = words[2:] if len(words) > 1 and lower[1] == "of" else words[1:]
        return " ".join([NOMINALS[lower[0]], *rest]), True
    named = lower[0] in PROCEDURES or (lower[0] in {"the", "a"} and len(words) > 1 and lower[1] in PROCEDURES)
    if named and not _STATE.search(" ".join(words)):
        return " ".join(["perform", _lower_first(" ".join(words))]), True
    return " ".join(words), False


def _gerund_phrase(imperative: str) -> str:
    """"touch the endothelium" -> "touching the endothelium"."""
    verb, _, rest = imperative.partition(" ")
    return " ".join(w for w in (GERUND.get(verb.lower(), verb), rest) if w)


def shows_something(text: str, is_action: bool) -> bool:
    """True when the text names an instrument, anatomy or technique, or is an action with an object."""
    words = {w.strip(".,;:!?()\"'").lower() for w in text.split()}
    words |= {w[:-1] for w in words if w.endswith("s")}
    return bool(words & _CONTENT_WORDS) or (is_action and len(words) > 1)


def _tidy(text: str) -> str:
    text = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s+", " ", text)).strip(" ,;:-\"'")
    return _TRAILING.sub("", text)


def _lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is an acronym (IOL, CTR, I/A)."""
    first = text.split(" ", 1)[0]
    return text if first[1:2].isupper() or first[1:2] == "/" else text[:1].lower() + text[1:]


def refine_clauses(sentence: str) -> list[tuple[str, bool]]:
    """One sentence -> its visible clauses as (text, is an imperative action), non-visual ones dropped."""
    pieces = _CLAUSE_BREAK.split(sentence)
    clauses: list[tuple[str, bool, bool]] = []  # text, is an action, describes a state
    for i, clause in enumerate(pieces):
        visible = _tidy(visible_part(clause))
        if not visible or (_SUBORDINATE.match(visible) and i < len(pieces) - 1):
            continue
        text, is_action = to_imperative(visible)
        text = _tidy(text)
        if text and shows_something(text, is_action):
            clauses.append((_lower_first(text), is_action, bool(_STATE.search(visible))))
    has_action = any(is_action for _, is_action, _ in clauses)
    return [(text, is_action) for text, is_action, state in clauses if is_action or not (has_action and state)]


def refine_narration(narration: str, max_words: int = 60) -> str:
    """A narration -> one concise instruction ending in a period, at most `max_words` words; "" if nothing visible."""
    kept: list[tuple[str, bool]] = []
    n_words = 0
    for text, is_action in (c for s in split_sentences(clean_text(narration)) for c in refine_clauses(s)):
        if any(text == seen for seen, _ in kept):
            continue  # auto-captions repeat rolling lines
        if kept and n_words + len(text.split()) > max_words:
            break
        kept.append((text, is_action))
        n_words += len(text.split())
    if not kept:
        return ""
    texts = [t for t, _ in kept]
    if len(kept) > 1 and kept[-1][1]:
        texts[-1] = "and " + texts[-1]
    text = " ".join(", ".join(texts).split()[:max_words])
    text = _tidy(text)
    return text[0].upper() + text[1:] + "."


def check_narrations(narrations: Sequence[str]) -> Sequence[str]:
    """The narrations, after checking that each is a string (a missing one should be "", not None or NaN)."""
    if isinstance(narrations, str):
        raise InputError("refine() takes a list of narrations, not one string")
    for i, narration in enumerate(narrations):
        if not isinstance(narration, str):
            raise InputError(f"narration {i} is {type(narration).__name__}, not text (use \"\" for none)")
    return narrations


class RulesRefiner:
    """Offline, deterministic refiner (the default backend)."""

    name = "rules"
    version = VERSION

    def __init__(self, max_words: int = 60) -> None:
        self.max_words = max_words
        self.counts = {"refined": 0, "empty": 0}

    def summary(self) -> dict:
        """What the pipeline records: backend, version and counts."""
        return {"backend": self.name, "version": self.version, "max_words": self.max_words, "counts": dict(self.counts)}

    def refine(self, narrations: Sequence[str]) -> list[str]:
        """One instruction per narration, same order; "" where nothing visible remains."""
        instructions = [refine_narration(n, self.max_words) for n in check_narrations(narrations)]
        self.counts["refined"] += len(instructions)
        self.counts["empty"] += instructions.count("")
        return instructions
