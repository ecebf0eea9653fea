"""The offline `rules` refiner: a surgeon's narration -> a concise, imperative generation instruction.

Deterministic and dependency-free. Each narration is cleaned (caption tags, fillers), split into
sentences and comma clauses; clauses about what a video cannot show (greetings, channel talk, patient
history, outcomes, complications, conditions such as "especially in cases with ...") are dropped or cut
off; the rest is rephrased as an imperative ("I'm now going to make the incision" -> "Make the
incision.") and kept only if it names an action, instrument or anatomy. "" means nothing visible.

Verbs outside the lexicon are recognised by their endings (-s, -ed, -en, -ing, with an irregular table), so a
passive ("the haptics are dialed into position") or a tool as subject ("the phaco tip sculpts a groove")
becomes an imperative ("Dial the haptics into position.", "Sculpt a groove with the phaco tip.").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

from ophora.core.errors import InputError

VERSION = "rules-3"

# ---------------------------------------------------------------------------------------------- lexicons

ACTION_VERBS = """
add adjust apply aspirate avoid begin bisect bring capture center centre check chop clean cleave clear close complete
continue crack create cut decrease deepen dial dissect divide do drape dry elevate emulsify engage enlarge
enter expand extend extract fill finish fixate flip flush fold go grab grasp groove guide hold hydrate hydrodelineate
hydrodissect implant incise increase inflate inject insert introduce irrigate lift load lower make manage
mark measure move nick nudge open paint peel perform pierce place polish position prep proceed prolapse pull
puncture push put raise reduce refill release remove reposition retract rinse rotate score sculpt seal secure
separate shave spin split stabilise stabilize stain start strip suture sweep switch take tap tear tie tilt touch
trim tuck turn twist unfold use vacuum viscodissect wash widen wipe withdraw
""".split()

# Irregular past forms and participles (forms that are mostly nouns or adjectives here, such as "wound",
# "left" and "ground", are left out), and verbs that double their last consonant before -ed/-ing.
IRREGULAR_PAST = {
    "begin": ("began", "begun"), "bend": ("bent",), "bind": ("bound",), "break": ("broke", "broken"),
    "bring": ("brought",), "build": ("built",), "catch": ("caught",), "choose": ("chose", "chosen"),
    "come": ("came",), "cut": ("cut",), "dig": ("dug",), "do": ("did", "done"), "draw": ("drew", "drawn"),
    "drive": ("drove", "driven"), "fall": ("fell", "fallen"), "feed": ("fed",), "feel": ("felt",),
    "find": ("found",), "freeze": ("froze", "frozen"), "get": ("got", "gotten"), "give": ("gave", "given"),
    "go": ("went", "gone"), "hang": ("hung",), "hide": ("hid", "hidden"), "hold": ("held",), "keep": ("kept",),
    "know": ("knew", "known"), "make": ("made",), "put": ("put",), "rise": ("rose", "risen"), "say": ("said",),
    "see": ("saw", "seen"), "send": ("sent",), "set": ("set",), "sew": ("sewed", "sewn"),
    "shake": ("shook", "shaken"), "show": ("showed", "shown"), "shut": ("shut",), "slide": ("slid",),
    "slit": ("slit",), "spin": ("spun",), "split": ("split",), "spread": ("spread",), "stick": ("stuck",),
    "strike": ("struck",), "sweep": ("swept",), "swing": ("swung",), "take": ("took", "taken"),
    "tear": ("tore", "torn"), "think": ("thought",), "throw": ("threw", "thrown"),
    "withdraw": ("withdrew", "withdrawn"), "write": ("wrote", "written"),
}
_DOUBLING = {"begin", "chop", "cut", "dial", "grab", "nick", "prep", "put", "spin", "split", "strip", "tap", "trim"}
# Verbs that describe, judge or go wrong rather than act: never turned into an instruction.
NOT_ACTIONS = set("""
affect appear associate base be become believe calcify call complicate compromise consider damage decenter
describe dislocate expect feel find get happen have hope infect inflame injure involve know like locate look lose
mention name need note notice observe occur opacify prefer recommend remain require rupture say sclerose see seem
show subluxate suppose swell think wait want watch weaken worry
""".split())

# Nouns naming an action ("cortical removal", "insertion of the IOL") -> the verb.
NOMINALS = {
    "removal": "remove", "aspiration": "aspirate", "irrigation": "irrigate", "insertion": "insert",
    "injection": "inject", "implantation": "implant", "rotation": "rotate", "placement": "place",
    "creation": "create", "extraction": "extract", "emulsification": "emulsify", "hydration": "hydrate",
    "polishing": "polish", "positioning": "position", "staining": "stain", "closure": "close",
    "introduction": "introduce",
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
# Heads of a noun phrase that can be the subject of an action: "the second instrument rotates ...".
TOOLS = set(INSTRUMENTS) | {"instrument", "microforceps", "aspirator", "irrigator"}
PERSONS = {"surgeon", "surgeons", "assistant", "assistants", "nurse", "doctor", "operator", "someone", "they"}
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
_FILLERS = re.compile(  # with the commas around them, which only set them off
    r"(?:,\s*)?\b(?:u+m+|u+h+|e+r+m+|hmm+|you know|i mean|kind of|sort of|basically|actually|literally|obviously)\b,?",
    re.IGNORECASE,
)
# Auto-captions spell the irrigation/aspiration handpiece "i a" (and ASR "I and A").
_I_A = re.compile(r"\bi(?: and |/| )a\b(?=\s+(?:handpiece|probe|probes|tip|mode|cannula|system)\b)|(?<=\bthe )i a\b",
                  re.IGNORECASE)
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
        # expectations and hopes are not seen
        r"(?:i|we|you) (?:would |might |may |can |could |will |do )?(?:expect|anticipate|hope|worry|wonder|suppose|"
        r"predict)\b",
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
    r"they", r"they're", r"they'll", r"i (?:think|believe|guess|feel)(?: that| like)?",
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
    r"what (?:i'm|we're|i am|we are) (?:going to|gonna) do(?: here| now)? is(?: to)?",
    r"the (?:main |most important |important |key )?thing(?: to remember| to do)? is(?: to)?",
]
_OPENERS = re.compile(
    r"^(?:" + "|".join(sorted(_OPENER_PHRASES, key=len, reverse=True)) + r")\b[,:]?(?:\s+|$)", re.IGNORECASE
)
# Openers that are the clause's subject: the word after them is its verb, even one outside the lexicon.
_SUBJECT = re.compile(r"(?:i|we|you|he|she|they|let's|let us|the surgeon|the doctor|dr\.? \w+)(?:'[a-z]+)?[,:]?\s*",
                      re.IGNORECASE)
_MANNER = {"gently", "carefully", "slowly", "slightly", "quickly", "meticulously", "thoroughly"}
_CAREFUL = re.compile(
    r"^be (?:very |extra |really )?careful(?: (?P<neg>not to)| (?:during|when|while|with|in|of|about))?\s+",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"^(?:don't|do not|never)\s+", re.IGNORECASE)
_PASSIVE = re.compile(
    r"^(?P<np>(?:[\w/'-]+ ){0,4}?[\w/'-]+) (?P<aux>is|are|was|were|gets|get|has been|have been|will be|can be|"
    r"should be|must be|needs to be|is being|are being|being)"
    r"(?: (?:now|then|gently|carefully|slowly|being|just|also|then))* "
    r"(?P<verb>\w+)\b(?P<rest>.*)$",
    re.IGNORECASE,
)
_DONE = re.compile(r" (?:is|are|was|were|being|gets) (?:then )?(?:done|performed|carried out|achieved)\b",
                   re.IGNORECASE)
# A comma, or a conjunction followed by a new subject, starts a new clause (auto-captions often lack commas).
_TOOL_WORDS = "|".join(re.escape(tool) for tool in sorted(TOOLS, key=len, reverse=True))
_CLAUSE_BREAK = re.compile(
    r",|\s(?:and|so|but)\s(?=(?:now |then )?(?:i|we|you|i'm|we're|you're|i'll|we'll|let's)\b)"
    r"|\sand\s(?=(?:the|a|an)\s(?:[\w/'-]+\s){0,3}?(?:is|are|was|were)\s)"
    rf"|\sand\s(?=(?:then\s)?(?:the|a|an|both)\s(?:[\w/'-]+\s){{0,2}}?(?:{_TOOL_WORDS})s?\s(?:then\s|\w+ly\s)?"
    r"\w+(?:s|ed)\b)",
    re.IGNORECASE,
)
# Words that cannot start the noun phrase of a passive ("after the nucleus is removed" is no object).
_NOT_OBJECT = {"i", "we", "you", "he", "she", "it", "they", "this", "that", "there", "here", "after", "once", "when",
               "before", "if", "while", "as", "because", "since", "so", "until", "which"}
# "..., which are then emulsified" -> "and emulsify them".
_WHICH_PASSIVE = re.compile(r"\s(?:which|that) (?P<aux>is|are) (?:then |subsequently )?(?P<verb>\w+)\b", re.IGNORECASE)
_SECOND_PARTICIPLE = re.compile(r"^ (?P<conj>and|or) (?P<verb>\w+)\b", re.IGNORECASE)  # "is prepped and draped"
_AND_PARTICIPLE = re.compile(r"\b(?P<conj>and then|and|then) (?P<verb>\w+)\b", re.IGNORECASE)
# A leading temporal clause ("After the nucleus is removed, ...") only sets the scene for the main clause.
_SUBORDINATE = re.compile(r"^(?:after|once|when|whenever|as soon as|now that|before|until)\b", re.IGNORECASE)
# A finite verb of state: a clause with one but no action describes rather than instructs.
_STATE = re.compile(r"\b(?:is|are|was|were|has|have|had|got|looks?|seems?|appears?)\b|'ve\b", re.IGNORECASE)
# A title card or chapter heading: "chapter two ...", "part 3: ...", "step 1 - ...", "introduction".
_NUMBER_WORDS = r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|ii|iii|iv|v|vi|vii|viii|ix|x|\d+"
_HEADING = re.compile(
    rf"^(?:(?:chapter|part|step|section|stage|phase|lesson|module|episode|video|case)\s+(?:{_NUMBER_WORDS})\b"
    r"|(?:introduction|intro|conclusion|summary|overview|outline|contents|table of contents)"
    r"(?=\s*(?:$|[:.\-\u2013\u2014]|to\b)))[\s:.\-\u2013\u2014]*",
    re.IGNORECASE,
)
# Where narration starts after a heading ("step two we make the incision", "step 1 is to ...").
_AFTER_HEADING = re.compile(r"\b(?:i|we|you|let's|i'm|we're|you're|i'll|we'll|now|so|okay|is|are)\b", re.IGNORECASE)
# Aspectual verbs after a named step: "phacoemulsification begins ..." -> "begin phacoemulsification ...".
_ASPECTS = {"begin": "begin", "commence": "begin", "start": "start", "continue": "continue", "proceed": "continue",
            "resume": "resume", "end": "finish", "finish": "finish", "conclude": "finish"}
_TIME_ADVERBS = {"then", "now", "next", "also", "first", "again", "just", "still", "subsequently", "finally", "further"}
_MODALS = {"will", "would", "can", "could", "should", "must", "may", "might", "shall", "gonna"}
_SUBJECT_DETERMINERS = {"the", "a", "an", "both", "two", "my", "our", "his", "her", "their", "another", "one", "this"}
# Words that start an object: after an unknown verb they confirm it ("we bisect the nucleus").
_OBJECT_STARTS = {"the", "a", "an", "it", "them", "this", "that", "these", "those", "its", "their", "some", "any",
                  "both", "each", "all", "another", "more", "two", "three", "four"}
# A clause fragment cut mid-phrase ("... with the keratome at") loses its dangling words.
_TRAILING = re.compile(r"(?:[\s,;:\"'-]|(?<!/)\b(?:and|or|then|with|to|the|a|an|of|so|but|while|as|is|are|we|i|you|at|in|on|"
                       r"into|onto|from|by|for|under|over|through|toward|towards|near|around|this|that|these|those|"
                       r"its|their|our|my|your|his|her|some|any|very|more|until|before|after|which|when|where)\b)+$",
                       re.IGNORECASE)


def _verb_forms(base: str) -> list[tuple[str, str]]:
    """(form, kind) pairs of one verb, kinds base, s, ing and past (regular rules plus the irregular table)."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        third = base + "es"
    elif base.endswith("y") and base[-2] not in "aeiou":
        third = base[:-1] + "ies"
    else:
        third = base + "s"
    double = base + base[-1] if base in _DOUBLING else base
    if base.endswith("ie"):
        ing, past = base[:-2] + "ying", base + "d"
    elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        ing, past = base[:-1] + "ing", base + "d"
    elif base.endswith("y") and base[-2] not in "aeiou":
        ing, past = base + "ing", base[:-1] + "ied"
    else:
        ing, past = double + "ing", double + "ed"
    pasts = IRREGULAR_PAST.get(base, (past,))
    return [(base, "base"), (third, "s"), (ing, "ing")] + [(form, "past") for form in pasts]


_SYNONYMS = {"do": "perform"}  # "we do a phaco chop" -> "Perform a phaco chop"
VERB_BASE: dict[str, str] = {form: _SYNONYMS.get(verb, verb) for verb in ACTION_VERBS for form, _ in _verb_forms(verb)}
GERUND: dict[str, str] = {verb: form for verb in ACTION_VERBS for form, kind in _verb_forms(verb) if kind == "ing"}
_CONTENT_WORDS = set(INSTRUMENTS) | set(ANATOMY) | set(TECHNIQUES) | PROCEDURES


def _known_forms() -> dict[str, tuple[str, frozenset[str]]]:
    """Every form of the lexicon's and the irregular verbs -> (base, the kinds it can be: "cut" is base and past)."""
    forms: dict[str, tuple[str, set[str]]] = {}
    for verb in sorted(set(ACTION_VERBS) | set(IRREGULAR_PAST) | NOT_ACTIONS):
        for form, kind in _verb_forms(verb):
            forms.setdefault(form, (verb, set()))[1].add(kind)
    return {form: (verb, frozenset(kinds)) for form, (verb, kinds) in forms.items()}


KNOWN_FORMS = _known_forms()
_KNOWN_BASES = {verb for verb, _ in KNOWN_FORMS.values()}
# Words that are never a verb in the slots read below (determiners, pronouns, prepositions, adverbs, numbers).
FUNCTION_WORDS = set("""
a about above across after again against all almost already also always an and another any anything around as
at away back be because been before behind being below beneath between both but by can could did do does done
down during each either else even ever every everything few for from further had has have he her here his how
however i if in inside into is it its itself just least less many may me might more most much must my near
neither never next no none nor not nothing now of off often on once one only onto or other our out outside over
own perhaps quite rather really same several she should since so some something soon still such than that the
their them then there these they this those though through thus to too toward towards under until up upon us
very via was we well were what when where whether which while who whom whose why will with within without would
yes yet you your two three four five six seven eight nine ten eleven twelve twenty hundred
""".split())
_NUMBER = re.compile(r"^\d")
# A stem left by -ed/-ing whose base ends in a silent e: one short syllable (made, wiped, used) or an ending such
# as -ate, -ute, -ide, -ude, -ine, -ure, -ire, -are, -ume, -ve, -ce, -ze, -ge, -se, -le, -oke, -ue.
_SILENT_E = re.compile(
    r"^[^aeiou]*[aeiou][^aeiouwxy]$|[^aeiou](?:at|ut|id|ud|od|in|ur|ir|ar|um)$|[vcu]$|(?<!z)z$"
    r"|(?:[^n]|[aeu]n)g$|(?<![su])s$|[aeiou]us$|[^aeioulr]l$|[^aeiou][aeiou]k$|[^e]e$"
)
_PARTICIPLE_EN = re.compile(r"^[^aeiou]+[aeiou][^aeiouwxy]en$")  # taken, given, driven, shaken, risen


def _restore_stem(stem: str) -> str:
    """The base of a verb from what is left after removing -ed or -ing: chopp -> chop, rotat -> rotate."""
    for candidate in (stem, stem + "e"):
        if candidate in _KNOWN_BASES:
            return candidate
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeiouslfz":
        return stem[:-1]
    several_syllables = len(re.findall(r"[aeiouy]+", stem)) > 1
    kept_double = stem.endswith(("all", "ill", "ull")) and not stem.endswith("iall")
    if stem.endswith("ll") and several_syllables and not kept_double:
        return stem[:-1]  # dialled -> dial, levelled -> level; installed, filled stay
    return stem + "e" if _SILENT_E.search(stem) else stem


@functools.lru_cache(maxsize=65536)
def verb_form(word: str) -> tuple[str, frozenset[str]] | None:
    """(base, kinds) of a word read as a verb, kinds among base, s, ing, past; None for function words.

    Known verbs come from the tables; others from their endings: "bisects" -> ("bisect", {"s"}),
    "dialed" -> ("dial", {"past"}), "taken" -> ("take", {"past"}), "stabilizing" -> ("stabilize", {"ing"}).
    """
    w = word.lower()
    if w in KNOWN_FORMS:
        return KNOWN_FORMS[w]
    if w in FUNCTION_WORDS or not w.isalpha() or len(w) < 3:
        return None
    if w.endswith("ing") and len(w) > 4 and re.search(r"[aeiouy]", w[:-3]):
        return _restore_stem(w[:-3]), frozenset({"ing"})
    if w.endswith("ied") and len(w) > 4:
        return w[:-3] + "y", frozenset({"past"})
    if w.endswith("ed") and len(w) > 3 and not w.endswith("eed"):
        return _restore_stem(w[:-2]), frozenset({"past"})
    if _PARTICIPLE_EN.match(w):
        return w[:-1], frozenset({"past"})
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        if w.endswith("ies"):
            return w[:-3] + "y", frozenset({"s"})
        return (w[:-2] if w.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")) else w[:-1]), frozenset({"s"})
    return w, frozenset({"base"})


def action_base(word: str, kinds: set[str]) -> str | None:
    """The base of `word` when it is one of `kinds` of a verb that acts (not "see", "need", "damage"); else None."""
    form = verb_form(word)
    if form is None or form[0] in NOT_ACTIONS or not form[1] & kinds:
        return None
    return _SYNONYMS.get(form[0], form[0])


# ---------------------------------------------------------------------------------------------- steps


def clean_text(text: str) -> str:
    """Unicode-normalise, drop caption tags ([Music], <i>, >>), links, filler words and repeats, collapse spaces."""
    text = unicodedata.normalize("NFKC", text).replace("\ufeff", "").replace("\u2019", "'").replace("\u2018", "'")
    text = _I_A.sub("I/A", _FILLERS.sub(" ", _TAGS.sub(" ", text)))
    return drop_repeats(re.sub(r"[ \t\r\f\v]+", " ", text).strip())


def drop_repeats(text: str, longest: int = 16) -> str:
    """Words said twice in a row kept once: a false start ("the, the lens", "we're, we're cracking"), or a rolling
    caption that repeats the line before and goes on ("make the incision at make the incision at the limbus");
    a trailing repeat of at least three earlier words is dropped ("... we rotate the nucleus" twice)."""
    words = text.split(" ")
    keys = [w.lower().strip(",.;:!?\"'") for w in words]
    i = 0
    while i < len(words):
        for n in range(min(longest, (len(words) - i) // 2), 0, -1):
            if keys[i:i + n] == keys[i + n:i + 2 * n] and any(keys[i:i + n]):
                del words[i:i + n], keys[i:i + n]
                break
        else:
            i += 1
    for start in range(1, len(words) - 2):
        tail = keys[start:]
        if any(keys[k:k + len(tail)] == tail for k in range(start - len(tail) + 1)):
            return " ".join(words[:start]).rstrip(",;:") + (words[-1][-1] if words[-1][-1] in ".!?" else "")
    return " ".join(words)


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


def strip_heading(sentence: str) -> str:
    """A sentence without a leading chapter heading or title ("chapter two lens implantation" -> "")."""
    heading = _HEADING.match(sentence)
    if not heading:
        return sentence
    narration = _AFTER_HEADING.search(sentence, heading.end())
    return sentence[narration.start():] if narration else ""


def to_imperative(clause: str) -> tuple[str, bool]:
    """Rephrase one clause as an instruction; returns (text, whether it now starts with a verb)."""
    manner: list[str] = []
    after_subject = False
    while True:
        opener = _OPENERS.match(clause)
        stripped = clause[opener.end():] if opener else clause
        after_subject = after_subject or bool(opener and _SUBJECT.fullmatch(opener.group()))
        first, _, rest = stripped.partition(" ")
        if first.lower() in _MANNER and rest:
            manner.append(first.lower())
            stripped = rest
        if stripped == clause:
            break
        clause = stripped
    text, is_action = _rephrase(clause, after_subject)
    if is_action and manner:
        text = " ".join(manner) + " " + text
    return text, is_action


def _rephrase(clause: str, after_subject: bool = False) -> tuple[str, bool]:
    """Turn a clause without its openers into an imperative where its grammar is recognised."""
    original, careful, negated = clause, False, False
    while prefix := _CAREFUL.match(clause) or _NEGATION.match(clause):
        if prefix.re is _NEGATION or prefix.group("neg"):
            negated = True
        else:
            careful = True
        clause = clause[prefix.end():]
    text, is_action = _rephrase_plain(clause, after_subject)
    if not is_action:
        return original, False
    if negated:
        return "avoid " + _gerund_phrase(text), True
    return ("carefully " + text if careful else text), True


def _rephrase_plain(clause: str, after_subject: bool) -> tuple[str, bool]:
    """A verb, a passive, a subject with its verb or a nominal at the start of the clause -> an imperative."""
    words = clause.split(" ")
    first = words[0].lower()
    if "ing" in _kinds(first) and (text := _from_aspect(words)):
        return text, True  # "sculpting continues ..." names a step, it does not start with a verb
    if first in VERB_BASE and not (len(words) > 1 and words[1].lower() in {"is", "are", "was", "were"}):
        return " ".join([VERB_BASE[first], *words[1:]]), True
    if after_subject and (verb := _verb_before_object(words, 0, {"base", "s", "ing", "past"})):
        return " ".join([verb, *words[1:]]), True
    for rephrase in (_from_passive, _from_subject, _from_aspect):
        if (text := rephrase(words)) is not None:
            return text, True
    return _from_nominal(words)


def _verb_before_object(words: list[str], i: int, kinds: set[str]) -> str | None:
    """The base of words[i] as an action verb of one of `kinds`; a verb outside the lexicon needs an object after it."""
    verb = action_base(words[i], kinds)
    if verb is None or words[i].lower() in KNOWN_FORMS:
        return verb
    if _names_content(words[i].lower()):
        return None  # "lens", "forceps": a noun, not a verb outside the lexicon
    following = words[i + 1].lower() if i + 1 < len(words) else ""
    return verb if following in _OBJECT_STARTS or _NUMBER.match(following) or _names_content(following) else None


def _kinds(word: str) -> frozenset[str]:
    """The kinds of verb form `word` can be (empty for function words)."""
    form = verb_form(word)
    return form[1] if form else frozenset()


def _names_content(word: str) -> bool:
    return word in _CONTENT_WORDS or word.removesuffix("s") in _CONTENT_WORDS


def _is_tool(word: str) -> bool:
    return word in TOOLS or word.removesuffix("s") in TOOLS or word.removesuffix("es") in TOOLS


def _from_passive(words: list[str]) -> str | None:
    """"the lens haptics are dialed into position" -> "dial the lens haptics into position"."""
    passive = _PASSIVE.match(" ".join(words))
    if not passive or words[0].lower() in _NOT_OBJECT:
        return None
    verb = action_base(passive.group("verb"), {"past"})
    rest = passive.group("rest")
    if verb is None or rest.lower().startswith(" like "):
        return None  # "the hook is shaped like an L" describes
    if (second := _SECOND_PARTICIPLE.match(rest)) and (other := action_base(second.group("verb"), {"past"})):
        verb, rest = f"{verb} {second.group('conj').lower()} {other}", rest[second.end():]  # "prep and drape the eye"
    pronoun = "them" if passive.group("aux").lower().startswith(("are", "were", "have", "get ")) else "it"
    rest = _AND_PARTICIPLE.sub(functools.partial(_base_of_participle, pronoun), _WHICH_PASSIVE.sub(_which_to_and, rest))
    return f"{verb} {_lower_first(passive.group('np'))}{_agent_to_means(rest)}"


def _which_to_and(match: re.Match) -> str:
    verb = action_base(match.group("verb"), {"past"})
    return f" and {verb} {'them' if match.group('aux').lower() == 'are' else 'it'}" if verb else match.group()


def _base_of_participle(pronoun: str, match: re.Match) -> str:
    """"... and emulsified" -> "... and emulsify them" (not "and angled forceps": an adjective before its noun)."""
    verb = action_base(match.group("verb"), {"past"})
    following = match.string[match.end():].split(" ", 2)[1:2]
    if not verb or (following and following[0].lower() not in FUNCTION_WORDS and not _NUMBER.match(following[0])):
        return match.group()
    return f"{match.group('conj')} {verb} {pronoun}"


def _agent_to_means(rest: str) -> str:
    """" by the second instrument" -> " with the second instrument"; " by the assistant" is dropped."""
    words = rest.split(" ")
    for i, word in enumerate(words):
        if word.lower() != "by":
            continue
        for j in range(i + 1, min(i + 6, len(words))):
            head = words[j].lower()
            if _is_tool(head):
                words[i] = "with"
                return " ".join(words)
            if head in PERSONS:
                return " ".join(words[:i] + words[j + 1:])
    return rest


def _from_subject(words: list[str]) -> str | None:
    """A tool or person with its verb -> imperative: "the phaco tip sculpts a groove" -> "sculpt a groove with the
    phaco tip", "the assistant irrigates the cornea" -> "irrigate the cornea"."""
    lower = [w.lower() for w in words]
    for head in range(min(len(words) - 1, 6)):
        if not all(_subject_word(w, k) for k, w in enumerate(lower[:head])):
            return None
        if not (_is_tool(lower[head]) or lower[head] in PERSONS):
            continue
        plural = lower[head].endswith("s") or bool({"both", "two"} & set(lower[:head]))
        if found := _finite_verb(words, head + 1, plural):
            verb_at, verb, manner = found
            rest = _coordinated_bases(words[verb_at + 1:])
            if lower[head] in PERSONS:
                return " ".join([*manner, verb, *rest])
            return " ".join([*manner, verb, *_with_means(rest, words[:head + 1], plural)])
    return None


def _subject_word(word: str, position: int) -> bool:
    """Whether `word` can stand before the head of a subject ("the", "second", "phaco"; not a verb or pronoun)."""
    if position == 0 and word in _SUBJECT_DETERMINERS:
        return True
    form = KNOWN_FORMS.get(word)
    is_verb = bool(form and form[1] & {"s", "past"})
    return (word not in FUNCTION_WORDS or word in {"of", "the", "a", "an", "two"}) and not is_verb


def _finite_verb(words: list[str], i: int, plural: bool) -> tuple[int, str, list[str]] | None:
    """After a subject: (index of its verb, the verb's base, manner adverbs), past auxiliaries and time adverbs."""
    manner: list[str] = []
    aux = ""
    while i < len(words):
        w = words[i].lower()
        if w in _MODALS or (w == "going" and i + 1 < len(words) and words[i + 1].lower() == "to"):
            aux, i = "modal", i + (2 if w == "going" else 1)
            continue
        if w in {"is", "are", "was", "were"}:
            aux = "be"
        elif w in {"has", "have", "had"}:
            aux = "have"
        elif w in _MANNER or (w.endswith("ly") and w not in KNOWN_FORMS and len(w) > 4):
            manner.append(w)
        elif w not in _TIME_ADVERBS:
            break
        i += 1
    if i >= len(words):
        return None
    kinds = {"be": {"ing"}, "have": {"past"}, "modal": {"base"}}.get(aux) or ({"s", "past", "base"} if plural else
                                                                               {"s", "past"})
    verb = _verb_before_object(words, i, kinds)
    return (i, verb, manner) if verb else None


def _coordinated_bases(words: list[str]) -> list[str]:
    """"... and rotates it" -> "... and rotate it": a second verb after and/then in its base form."""
    out = list(words)
    for i in range(1, len(words)):
        if words[i - 1].lower() in {"and", "then"} and (verb := _verb_before_object(words, i, {"s", "past"})):
            out[i] = verb
    return out


def _with_means(rest: list[str], subject: list[str], plural: bool) -> list[str]:
    """The rest of the clause with "with <subject>" before its purpose, time clause or second verb, else at the end."""
    tool = _lower_first(" ".join(subject))
    if subject[0].lower() not in _SUBJECT_DETERMINERS and not plural:
        tool = "the " + tool
    lower = [w.lower() for w in rest]
    at = len(rest)
    for i in range(1, len(rest)):
        following = lower[i + 1] if i + 1 < len(rest) else ""
        purpose = lower[i] == "to" and following and not (
            following in FUNCTION_WORDS or _NUMBER.match(following) or _names_content(following))
        if (lower[i] in {"while", "until", "before", "after", "then", "so"} or purpose
                or (lower[i] == "in" and following == "order") or (lower[i] == "and" and following in VERB_BASE)):
            at = i
            break
    preposition = "using" if "with" in lower[:at] else "with"
    return [*rest[:at], preposition, tool, *rest[at:]]


def _from_aspect(words: list[str]) -> str | None:
    """A named step with begin/continue/end: "phacoemulsification of the nucleus begins in the bag" ->
    "begin phacoemulsification of the nucleus in the bag"."""
    lower = [w.lower() for w in words]
    for i in range(1, min(len(words), 8)):
        if not _kinds(lower[i]) & {"s", "past"}:
            continue
        base = verb_form(lower[i])[0]
        if base not in _ASPECTS:
            return None
        start = i
        while start > 1 and lower[start - 1] in _TIME_ADVERBS:
            start -= 1
        named = any(w in PROCEDURES or w in TECHNIQUES or w in NOMINALS or "ing" in _kinds(w) for w in lower[:start])
        return " ".join([_ASPECTS[base], _lower_first(" ".join(words[:start])), *words[i + 1:]]) if named else None
    return None


def _from_nominal(words: list[str]) -> tuple[str, bool]:
    """Nominal phrasing -> imperative.

    "cortical removal ..." -> "remove cortex ...", "insertion of the IOL" -> "insert the IOL",
    "hydrodissection" -> "perform hydrodissection"; never "perform" before a clause that has its own verb.
    """
    words = _DONE.sub("", " ".join(words)).split(" ")
    lower = [w.lower().strip(",") for w in words]
    if len(words) > 1 and lower[0] in ADJECTIVE_OBJECTS and lower[1] in NOMINALS:
        return " ".join([NOMINALS[lower[1]], ADJECTIVE_OBJECTS[lower[0]], *words[2:]]), True
    if lower[0] in NOMINALS:
        rest = words[2:] if len(words) > 1 and lower[1] == "of" else words[1:]
        return " ".join([NOMINALS[lower[0]], *rest]), True
    named = lower[0] in PROCEDURES or (lower[0] in {"the", "a"} and len(words) > 1 and lower[1] in PROCEDURES)
    if named and not _STATE.search(" ".join(words)) and not _has_finite_verb(words):
        return " ".join(["perform", _lower_first(" ".join(words))]), True
    return " ".join(words), False


def _has_finite_verb(words: list[str]) -> bool:
    """Whether a word after the first is a verb in the third person or the past: "... frees the nucleus",
    "... stays in the pupil" (a verb before an object or a preposition; not "nucleus fragments")."""
    lower = [w.lower() for w in words] + [""]
    return any(_verb_before_object(words, i, {"s", "past"}) or (
        lower[i + 1] in FUNCTION_WORDS - {"and", "or"} and _kinds(lower[i]) & {"s", "past"}
        and not _names_content(lower[i])) for i in range(1, len(words)))


def _gerund_phrase(imperative: str) -> str:
    """"touch the endothelium" -> "touching the endothelium"."""
    verb, _, rest = imperative.partition(" ")
    return " ".join(w for w in (GERUND.get(verb.lower(), verb), rest) if w)


_GENERIC_VERBS = {"perform", "go", "take", "get", "make", "put"}  # need a named thing to show anything


def shows_something(text: str, is_action: bool) -> bool:
    """True when the text names an instrument, anatomy or technique, or is an action (not a generic one such as
    "perform about twenty of these") with an object."""
    words = {w.strip(".,;:!?()\"'").lower() for w in text.split()}
    words |= {w[:-1] for w in words if w.endswith("s")}
    generic = text.split(" ", 1)[0].lower() in _GENERIC_VERBS
    return bool(words & _CONTENT_WORDS) or (is_action and len(words) > 1 and not generic)


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


# Unpunctuated text (auto-captions) is split into clauses before these words: a discourse marker, or a subject
# that starts a new clause, unless the word before binds it ("what we", "thank you", "as i").
_CLAUSE_STARTS = {"now", "so", "okay", "ok", "alright", "next", "we", "i", "let's", "we're", "i'm", "we'll",
                  "i'll", "we've", "i've", "here", "welcome", "dont", "don't", "hello", "hi", "hey", "thanks", "thank", "remember",
                  "don't", "please", "today", "this", "that's", "it's", "there's", "subscribe", "see"}
_BINDS_NEXT = {"what", "as", "that", "if", "when", "where", "how", "once", "which", "who", "so", "and", "but", "because",
               "while", "before", "after", "until", "thank", "show", "tell", "let", "help", "to", "with", "for", "do",
               "and", "right", "just", "until", "than", "is", "are", "was", "were", "of", "in", "on", "at", "by",
               "into", "from", "see", "like", "okay", "ok", "alright", "now", "here", "all", "like", "well", "then"}
_TWO_WORD_STARTS = {"you can", "you'll see", "you see", "make sure", "be careful", "as you", "if you"}


def segment_unpunctuated(text: str) -> str:
    """Text without punctuation (auto-captions, some ASR) -> one sentence of comma-separated clauses.

    Punctuated text is returned unchanged: its own punctuation says where clauses end.
    """
    if re.search(r"[.!?;,]", text):
        return text
    words = text.split()
    out: list[str] = []
    for i, word in enumerate(words):
        lower = word.lower()
        pair = f"{lower} {words[i + 1].lower()}" if i + 1 < len(words) else ""
        if (i and (lower in _CLAUSE_STARTS or pair in _TWO_WORD_STARTS) and words[i - 1].lower() not in _BINDS_NEXT
                and len(out) - _last_break(out) >= 2):
            out[-1] += ","
        out.append(word)
    return " ".join(out)


def _last_break(words: list[str]) -> int:
    """How many words precede the current clause in `words`."""
    return max((i + 1 for i, w in enumerate(words) if w.endswith(",")), default=0)


def refine_narration(narration: str, max_words: int = 60) -> str:
    """A narration -> one concise instruction ending in a period, at most `max_words` words; "" if nothing visible."""
    kept: list[tuple[str, bool]] = []
    n_words = 0
    sentences = (strip_heading(s) for s in split_sentences(segment_unpunctuated(clean_text(narration))))
    for text, is_action in (c for s in sentences for c in refine_clauses(s)):
        if any(text == seen or seen.startswith(text + " ") for seen, _ in kept):
            continue  # auto-captions repeat rolling lines
        if repeated := [i for i, (seen, _) in enumerate(kept) if text.startswith(seen + " ")]:
            n_words += len(text.split()) - len(kept[repeated[0]][0].split())
            kept[repeated[0]] = (text, is_action)  # a repeated line that goes on: the longer one, in its place
            continue
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


def narration_clauses(narration: str) -> list[str]:
    """The narration's clauses as the refiner reads them (cleaned, unpunctuated text segmented, repeats once)."""
    sentences = split_sentences(segment_unpunctuated(clean_text(narration)))
    return [c for s in sentences for piece in _CLAUSE_BREAK.split(s) if (c := _tidy(piece))]


def dropped_clauses(narration: str, instruction: str) -> list[str]:
    """The clauses of `narration` that none of `instruction`'s words come from (any refiner's instruction): a
    clause is kept when one of its words of four letters or more, or its verb's base, is in the instruction."""
    said = {w[:5] for w in re.findall(r"[a-z]{4,}", instruction.lower())}
    dropped = []
    for clause in narration_clauses(narration):
        words = [w for w in re.findall(r"[a-z]{4,}", clause.lower()) if w not in FUNCTION_WORDS]
        bases = {(verb_form(w) or (w,))[0][:5] for w in words}
        if not ({w[:5] for w in words} | bases) & said:
            dropped.append(clause)
    return dropped


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
