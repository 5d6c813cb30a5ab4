"""Generate the quickstart corpus: short, simple English stories and facts, written by a seeded grammar.

The text is the project's own (no copied text) and regular enough that a few-million-parameter model learns
visible structure in minutes on a CPU. Regenerate the shipped file with:

    python -m lmforge.resources.quickstart_corpus src/lmforge/resources

`quickstart_heldout.jsonl` (`lmforge_quickstart_heldout`) holds documents the training corpus does not have, for
perplexity on text the model never saw.
"""

from __future__ import annotations

import json
import os
import random
import sys

NAMES = ["Mia", "Leo", "Ava", "Sam", "Nora", "Ben", "Lily", "Max", "Zoe", "Tom", "Ella", "Jack", "Ruby", "Finn",
         "Ivy", "Owen", "Lucy", "Theo", "Rosa", "Hugo"]
ANIMALS = ["cat", "dog", "rabbit", "bird", "fox", "duck", "horse", "mouse", "frog", "bear", "owl", "goat"]
COLORS = ["red", "blue", "green", "yellow", "small", "big", "old", "shiny", "soft", "tiny"]
OBJECTS = ["ball", "kite", "box", "hat", "book", "cup", "boat", "drum", "key", "lamp", "shell", "stone"]
PLACES = ["park", "garden", "forest", "beach", "kitchen", "river", "hill", "market", "school", "library"]
FEELINGS = ["happy", "sad", "tired", "excited", "scared", "proud", "curious", "calm"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy"]
TIMES = ["One morning", "One day", "After lunch", "In the evening", "Last summer", "On Sunday", "At night"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def story(rng: random.Random) -> str:
    hero, friend = rng.sample(NAMES, 2)
    animal, obj, color = rng.choice(ANIMALS), rng.choice(OBJECTS), rng.choice(COLORS)
    place, feeling, weather = rng.choice(PLACES), rng.choice(FEELINGS), rng.choice(WEATHER)
    sentences = [
        f"{rng.choice(TIMES)}, {hero} went to the {place} with a {color} {obj}.",
        f"It was {weather} and {hero} felt {feeling}.",
        rng.choice([
            f"At the {place}, {hero} met a {animal} named {friend}.",
            f"There {hero} saw {friend}, who was looking for a lost {animal}.",
            f"A little {animal} sat under a tree and watched {hero}.",
        ]),
        rng.choice([
            f"\"Can I play with your {obj}?\" asked {friend}.",
            f"\"Look at my {color} {obj}!\" said {hero}.",
            f"\"Where are you going?\" asked the {animal}.",
        ]),
        rng.choice([
            f"{hero} shared the {obj}, and they played until the sun went down.",
            f"They looked everywhere, and at last they found the {animal} near the {rng.choice(PLACES)}.",
            f"The {obj} rolled away, so {hero} and {friend} ran after it.",
        ]),
        rng.choice([
            f"When {hero} came home, {hero} was {rng.choice(FEELINGS)} and told everyone about the day.",
            f"That night {hero} dreamed of the {color} {obj} and the {animal}.",
            f"From that day on, {hero} and {friend} were good friends.",
        ]),
    ]
    return " ".join(sentences)


def arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5:
            lines.append(f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {NUMBERS[a + b]}.")
        else:
            a, b = max(a, b), min(a, b)
            lines.append(f"{NUMBERS[a].capitalize()} minus {NUMBERS[b]} is {NUMBERS[a - b]}.")
    return " ".join(lines)


def facts(rng: random.Random) -> str:
    animal = rng.choice(ANIMALS)
    lines = [f"The {animal} is an animal."]
    lines.append(rng.choice([f"A {animal} likes the {rng.choice(PLACES)}.", f"Most days the {animal} is "
                             f"{rng.choice(FEELINGS)}."]))
    lines.append(f"The weather today is {rng.choice(WEATHER)}, and tomorrow it will be {rng.choice(WEATHER)}.")
    lines.append(f"{rng.choice(NAMES)} has {NUMBERS[rng.randint(2, 9)]} {rng.choice(OBJECTS)}s.")
    return " ".join(lines)


def generate(n_documents: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    kinds = [story] * 6 + [arithmetic] * 2 + [facts] * 2
    return [rng.choice(kinds)(rng) for _ in range(n_documents)]


def heldout(n_documents: int = 200, seed: int = 1) -> list[str]:
    """Documents of the same grammar that the training corpus (`generate()`) does not contain."""
    training = set(generate())
    rng = random.Random(seed)
    kinds = [story] * 6 + [arithmetic] * 2 + [facts] * 2
    out: list[str] = []
    while len(out) < n_documents:
        text = rng.choice(kinds)(rng)
        if text not in training and text not in out:
            out.append(text)
    return out


def main(directory: str) -> None:
    for name, texts in (("quickstart_corpus.jsonl", generate()), ("quickstart_heldout.jsonl", heldout())):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": text}) + "\n" for text in texts)


if __name__ == "__main__":
    main(sys.argv[1])
