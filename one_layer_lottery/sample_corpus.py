"""The project's own German-English sample corpus, generated from a small template grammar.

Deterministic (fixed seed, no external data): ``python -m one_layer_lottery.sample_corpus DIR``
writes train/valid/test .de/.en files, lowercased and tokenised (punctuation split off).
Covers gender and case agreement (der/den, adjective endings), verb agreement, negation
with its English do-support, and coordinated clauses, so a model has to learn more than a
word-for-word lookup.
"""
import argparse
import os
import random

from .atomic import atomic_output, output_directory
from .console import tool_errors

# (gender, German noun, English noun)
AGENTS = [
    ("m", "mann", "man"), ("m", "hund", "dog"), ("m", "junge", "boy"), ("m", "lehrer", "teacher"),
    ("m", "vogel", "bird"), ("m", "koch", "cook"), ("f", "frau", "woman"), ("f", "katze", "cat"),
    ("f", "ärztin", "doctor"), ("f", "mutter", "mother"), ("n", "kind", "child"),
    ("n", "mädchen", "girl"), ("n", "pferd", "horse"),
]
THINGS = [
    ("m", "ball", "ball"), ("m", "apfel", "apple"), ("m", "hut", "hat"), ("m", "brief", "letter"),
    ("f", "tasche", "bag"), ("f", "blume", "flower"), ("f", "tür", "door"), ("n", "buch", "book"),
    ("n", "auto", "car"), ("n", "fenster", "window"), ("n", "bild", "picture"),
]
ADJECTIVES = [
    ("klein", "small"), ("groß", "big"), ("alt", "old"), ("jung", "young"), ("rot", "red"),
    ("müde", "tired"), ("glücklich", "happy"), ("blau", "blue"), ("schön", "beautiful"),
]
# (German 3rd person singular, English 3rd person singular, English base form)
TRANSITIVE = [
    ("sieht", "sees", "see"), ("findet", "finds", "find"), ("mag", "likes", "like"),
    ("hört", "hears", "hear"), ("trägt", "carries", "carry"), ("malt", "paints", "paint"),
    ("sucht", "looks for", "look for"), ("kauft", "buys", "buy"),
]
INTRANSITIVE = [
    ("schläft", "sleeps", "sleep"), ("läuft", "runs", "run"), ("lacht", "laughs", "laugh"),
    ("singt", "sings", "sing"), ("spielt", "plays", "play"), ("wartet", "waits", "wait"),
]
PLACES = [
    ("im park", "in the park"), ("am fluss", "by the river"), ("in der küche", "in the kitchen"),
    ("auf der straße", "on the street"), ("im garten", "in the garden"), ("heute", "today"),
    ("am morgen", "in the morning"), ("am abend", "in the evening"),
]
ARTICLE = {("m", "nom"): "der", ("f", "nom"): "die", ("n", "nom"): "das",
           ("m", "acc"): "den", ("f", "acc"): "die", ("n", "acc"): "das"}


# Weak masculine nouns take -n outside the nominative (der junge / den jungen).
WEAK_NOUNS = {"junge"}


def noun_phrase(rng, nouns, case):
    gender, de, en = rng.choice(nouns)
    if case == "acc" and de in WEAK_NOUNS:
        de += "n"
    if rng.random() < 0.5:
        adj_de, adj_en = rng.choice(ADJECTIVES)
        # Weak declension after the definite article: -en for masculine accusative, else -e.
        ending = "en" if (gender, case) == ("m", "acc") else "e"
        stem = adj_de[:-1] if adj_de.endswith("e") else adj_de
        return f"{ARTICLE[gender, case]} {stem}{ending} {de}", f"the {adj_en} {en}"
    return f"{ARTICLE[gender, case]} {de}", f"the {en}"


def clause(rng):
    subj_de, subj_en = noun_phrase(rng, AGENTS, "nom")
    negated = rng.random() < 0.2
    if rng.random() < 0.7:
        verb_de, verb_en, verb_base = rng.choice(TRANSITIVE)
        obj_de, obj_en = noun_phrase(rng, AGENTS + THINGS, "acc")
        de = f"{subj_de} {verb_de} {obj_de}" + (" nicht" if negated else "")
        en = f"{subj_en} " + (f"does not {verb_base}" if negated else verb_en) + f" {obj_en}"
    else:
        verb_de, verb_en, verb_base = rng.choice(INTRANSITIVE)
        de = f"{subj_de} {verb_de}" + (" nicht" if negated else "")
        en = f"{subj_en} " + (f"does not {verb_base}" if negated else verb_en)
    if rng.random() < 0.5:
        place_de, place_en = rng.choice(PLACES)
        de, en = f"{de} {place_de}", f"{en} {place_en}"
    return de, en


def sentence_pair(rng):
    de, en = clause(rng)
    if rng.random() < 0.25:
        de2, en2 = clause(rng)
        de, en = f"{de} und {de2}", f"{en} and {en2}"
    return f"{de} .", f"{en} ."


def generate(seed=2021, sizes=(("train", 4000), ("valid", 300), ("test", 300))):
    """{split: [(de, en), ...]} with no sentence pair in two splits."""
    rng = random.Random(seed)
    seen, splits = set(), {}
    for split, size in sizes:
        pairs = []
        while len(pairs) < size:
            pair = sentence_pair(rng)
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
        splits[split] = pairs
    return splits


def write(out_dir, seed=2021):
    output_directory(out_dir)
    for split, pairs in generate(seed).items():
        for lang, col in (("de", 0), ("en", 1)):
            with atomic_output(os.path.join(out_dir, f"{split}.{lang}")) as tmp:
                with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                    f.writelines(p[col] + "\n" for p in pairs)


def main():
    parser = argparse.ArgumentParser(prog="python -m one_layer_lottery.sample_corpus",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args()
    with tool_errors("sample_corpus"):
        write(args.out_dir, args.seed)


if __name__ == "__main__":
    main()
