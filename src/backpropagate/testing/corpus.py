"""A small built-in English corpus for training the tiny tokenizers.

The tiny models need a real byte-level BPE so that tests see realistic token boundaries (common chat
words merged into single tokens, rare words split into pieces). The text lives in the package instead
of being downloaded, and it is produced without randomness, so the trained tokenizer is identical on
every machine.
"""

from __future__ import annotations

from collections.abc import Iterator

# Hand-written lines: chat turns, instructions, facts, code and markdown, so the merges cover the
# words and punctuation that fine-tuning data and chat templates are made of.
_LINES: tuple[str, ...] = (
    "Hello! How can I help you today?",
    "Hi there, I have a question about my order.",
    "Thank you so much for your help, that was exactly what I needed.",
    "You are a helpful assistant. Answer the user's question clearly and briefly.",
    "You are a friendly assistant that answers questions about cooking.",
    "Sure, here is a short summary of the article you shared.",
    "I'm sorry, but I don't have access to real-time information.",
    "Could you please explain what a neural network is?",
    "A neural network is a function made of layers of simple units that learn from examples.",
    "What is the capital of France? The capital of France is Paris.",
    "What is the capital of Japan? The capital of Japan is Tokyo.",
    "Please write a haiku about the ocean.",
    "Waves fold into foam, the moon pulls the tide back home, salt wind on my face.",
    "Translate 'good morning' into Spanish. In Spanish, 'good morning' is 'buenos días'.",
    "Can you give me three tips for better sleep?",
    "1. Go to bed at the same time every night.\n2. Avoid screens before bed.\n3. Keep the room cool.",
    "The weather today is sunny with a high of 24 degrees and a light breeze.",
    "Let's think step by step. First, we add the numbers; then we divide by the count.",
    "The answer is 42, because 6 times 7 equals 42.",
    "If x + 3 = 10, then x = 7.",
    "The system prompt tells the assistant how to behave during the conversation.",
    "The user asked the assistant to call a tool, and the tool returned a response.",
    "Tool calls return JSON, for example {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}.",
    "The function get_weather takes a city name and returns the temperature in Celsius.",
    "Fine-tuning adapts a pretrained language model to a new task with a small dataset.",
    "LoRA adds small low-rank matrices to the attention and feed-forward layers.",
    "The learning rate controls how large each update step is during training.",
    "Training loss went down from 2.31 to 1.05 after three epochs.",
    "Save the model, export it to GGUF, and run it locally with Ollama.",
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Once upon a time, in a small village by the river, there lived an old baker.",
    "Every morning he baked bread, and the whole village woke up to the smell of it.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Earth goes around the Sun once every 365 days.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "Shakespeare wrote Hamlet, Macbeth and Romeo and Juliet.",
    "Here is a Python function that adds two numbers:",
    "def add(a, b):\n    return a + b",
    "for i in range(10):\n    print(i)",
    "import json\ndata = json.loads(text)\nprint(data[\"name\"])",
    "if value is None:\n    raise ValueError(\"value must not be empty\")",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "## Summary\n\n- The model was trained for two epochs.\n- The results look good.",
    "**Note:** this step may take a few minutes on a small GPU.",
    "Knowledge cutoff date and reasoning mode are listed in the metadata section.",
    "Custom instructions: answer in a formal tone and keep it short.",
    "Is it going to rain tomorrow? I am not sure, you should check a weather service.",
    "My name is Alex and I work as a software engineer in Berlin.",
    "Nice to meet you, Alex! What would you like to talk about?",
    "Can you recommend a good book? I really enjoyed 'The Hobbit' by J. R. R. Tolkien.",
    "Please summarize the following text in one sentence.",
    "Write an email to my manager asking for a day off next Friday.",
    "Dear Maria, I would like to request a day off on Friday. Best regards, Sam.",
    "What time is it in New York when it is noon in London? It is 7 a.m. in New York.",
    "How do I reverse a list in Python? Use my_list[::-1] or my_list.reverse().",
    "The meeting starts at 9:30 and ends at 11:00 in room B.",
    "Prices went up by 3.5% last year, while wages rose by 4.1%.",
    "Yes, of course. No, I don't think so. Maybe later. Absolutely!",
    "Why is the sky blue? Sunlight is scattered by the air, and blue light scatters the most.",
    "Thinking about it again, the first answer was wrong; the correct answer is 12.",
    "Okay, let me check that for you. One moment please.",
    "The assistant should not make up facts; if unsure, it should say so.",
    "Goodbye, and have a great day!",
)

_SUBJECTS = ("The assistant", "The user", "My friend", "The teacher", "Our team", "The model",
             "A student", "The doctor", "Everyone", "The small robot")
_VERBS = ("explained", "asked about", "wrote about", "answered a question about", "talked about",
          "learned about", "read a story about", "made a plan for", "found a problem with",
          "shared a recipe for")
_OBJECTS = ("the weather in the mountains", "a new programming language", "the history of Rome",
            "healthy breakfast ideas", "the best way to learn math", "a trip to the sea",
            "the results of the experiment", "a birthday party for the kids", "the city library",
            "music and movies")
_ENDINGS = (".", "!", " yesterday.", " this morning.", " again.", ", and it was great.",
            " in detail.", ", but nobody listened.", " with a smile.", ", which helped a lot.")


def _generated() -> Iterator[str]:
    """Deterministic combinations: varied enough for ~1000 merges without any randomness."""
    n = 0
    for i, subject in enumerate(_SUBJECTS):
        for j, verb in enumerate(_VERBS):
            obj = _OBJECTS[(i * 3 + j) % len(_OBJECTS)]
            ending = _ENDINGS[(i + j * 7) % len(_ENDINGS)]
            yield f"{subject} {verb} {obj}{ending}"
            n += 1
            if n % 7 == 0:
                yield f"Question {n}: what is {i} plus {j}? Answer: {i + j}."


def corpus() -> list[str]:
    """The training text for the tiny tokenizers, in a fixed order."""
    return [*_LINES, *_generated()]
