"""Asking: a sentence asks for something by its shape (question, wish, imperative), in any task."""

from __future__ import annotations

import pytest

from proxy.memory.asking import asks_for_something, looks_english

REQUESTS = [
    # imperatives with verbs no opener list held
    "Act as a travel guide and describe three hidden spots in Lisbon.",
    "Develop a marketing strategy for a small bakery.",
    "Tabulate the results by region.",
    "Walk me through setting up a VPN.",
    "Please reformat this table as CSV.",
    "Hey Nate, draft an invitation for Friday.",
    "OK, now transpose the matrix.",
    "Read the article and summarise it.",
    # questions, with or without a question mark
    "How do I make a sourdough starter?",
    "Could you check my cover letter",
    "Is there a faster way to do this",
    "Have you got a recipe for pancakes",
    "What's the capital of Peru",
    "Why does my build fail on Windows",
    # wishes put to the listener
    "I need a packing list for a week in Norway.",
    "I want you to review this contract.",
    "I'd like three names for a bakery.",
    "We're looking for a venue for sixty people.",
    "Let's plan the sprint.",
    "I was wondering whether the museum opens on Mondays.",
]

NOT_REQUESTS = [
    "I went to a support group yesterday and it was so powerful.",
    "Thanks, Melanie!",
    "Love the photo!",
    "Have a great day!",
    "Had a great time at the beach.",
    "Went to the museum with the kids.",
    "Sounds like a plan.",
    "When I was young, my grandma gave me this necklace.",
    "What a day.",
    "Take care.",
    "Just finished another painting.",
    "My kids love dinosaurs.",
    "Hope the move went well.",
    "Yes, it was amazing!",
    # cheers and exclamations have an order's shape but set no task
    "Keep it up!",
    "Way to go!",
    "Appreciate your kind words.",
    "Aw, that's sweet, Mel!",
    "So creamy and delicious!",
    "Domestic abuse is horrible.",
    "Hey Nate, my favorite treat is this chocolate tart.",
    "I wish you all the best on your exams!",
    "I'd love to do either of those things with you!",
    "Just want to let them know their work is appreciated.",
    "Let me know if you need anything.",
    "Challenges, growth, all that jazz, it's been amazing.",
    "",
]


@pytest.mark.parametrize("sentence", REQUESTS)
def test_a_question_a_wish_or_an_order_asks_for_something(sentence: str) -> None:
    assert asks_for_something(sentence)


@pytest.mark.parametrize("sentence", NOT_REQUESTS)
def test_statements_and_small_talk_ask_for_nothing(sentence: str) -> None:
    assert not asks_for_something(sentence)


@pytest.mark.parametrize(
    ("sentence", "asks"),
    [
        # Read as English, "Die" would be an order; it is German, and says no more than this.
        ("Die Katze schläft auf dem Sofa.", False),
        ("Schreib mir bitte ein Gedicht über das Meer.", True),
        ("Escribe un poema sobre el mar, por favor.", True),
        ("Hace buen tiempo en la playa y el mar está tranquilo.", False),
        ("¿Dónde está la estación?", True),
        ("今日はいい天気ですね。", False),
        ("海についての詩を書いてください。", True),
        ("Как дела？", True),
        ("Напиши стихотворение о море, пожалуйста.", True),
        ("Мы ходили в музей.", False),
    ],
)
def test_other_languages_ask_by_question_marks_and_please(sentence: str, asks: bool) -> None:
    assert not looks_english(sentence)
    assert asks_for_something(sentence) is asks
