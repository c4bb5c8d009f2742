"""Writes tool_bench.jsonl, the bundled tool-use benchmark (run: python build_tool_bench.py).

Deterministic (fixed seed). Each line is one case: ``id``, ``category`` (``single``, ``parallel``
or ``no_tool``), ``messages`` (OpenAI form), ``tools`` (OpenAI function schemas: the gold tools
plus distractors) and ``gold`` (the expected calls, ``[]`` when no tool should be called).
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def fn(name, description, props, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required}}}


S = {"type": "string"}
N = {"type": "number"}
TOOLS = {
    "get_weather": fn("get_weather", "Get the current weather in a city.",
                      {"city": {**S, "description": "city name"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                      ["city"]),
    "calculator": fn("calculator", "Evaluate an arithmetic expression exactly.",
                     {"expression": {**S, "description": "e.g. '(3 + 4) * 2'"}}, ["expression"]),
    "search_web": fn("search_web", "Search the web and return the top results.", {"query": S}, ["query"]),
    "send_email": fn("send_email", "Send an email.", {"to": {**S, "description": "recipient address"}, "subject": S,
                                                      "body": S}, ["to", "subject", "body"]),
    "create_event": fn("create_event", "Add an event to the calendar.",
                       {"title": S, "date": {**S, "description": "YYYY-MM-DD"}, "time": {**S, "description": "HH:MM"}},
                       ["title", "date"]),
    "convert_currency": fn("convert_currency", "Convert an amount of money between currencies.",
                           {"amount": N, "from_currency": {**S, "description": "ISO code, e.g. USD"},
                            "to_currency": {**S, "description": "ISO code"}}, ["amount", "from_currency", "to_currency"]),
    "translate": fn("translate", "Translate text into another language.",
                    {"text": S, "target_language": {**S, "description": "language name, e.g. French"}},
                    ["text", "target_language"]),
    "get_stock_price": fn("get_stock_price", "Get the latest price of a stock.",
                          {"symbol": {**S, "description": "ticker symbol, e.g. AAPL"}}, ["symbol"]),
    "set_timer": fn("set_timer", "Start a countdown timer.", {"minutes": N, "label": S}, ["minutes"]),
    "get_time": fn("get_time", "Get the current local time in a time zone.",
                   {"timezone": {**S, "description": "IANA name, e.g. Europe/Paris"}}, ["timezone"]),
    "play_music": fn("play_music", "Play a song or an artist.", {"song": S, "artist": S}, []),
    "convert_units": fn("convert_units", "Convert a quantity between units of measurement.",
                        {"value": N, "from_unit": S, "to_unit": S}, ["value", "from_unit", "to_unit"]),
    "read_file": fn("read_file", "Read a text file from the user's documents folder.", {"path": S}, ["path"]),
}

CITIES = ["Paris", "Tokyo", "Nairobi", "Lima", "Oslo", "Hanoi", "Toronto", "Cairo", "Sydney", "Berlin", "Mumbai", "Quito"]


def singles(rng):
    out = []
    w = [("What's the weather like in {c} right now?", {}), ("Is it raining in {c}?", {}),
         ("Tell me the temperature in {c} in fahrenheit.", {"unit": "fahrenheit"}),
         ("How warm is it in {c} today, in celsius?", {"unit": "celsius"}), ("Weather report for {c}, please.", {})]
    for i, c in enumerate(rng.sample(CITIES, 10)):
        q, extra = w[i % len(w)]
        out.append(("get_weather", q.format(c=c), {"city": c, **extra}))
    for a, b, op in [(123456789, 987654321, "*"), (2 ** 31, 7, "%"), (98765, 4321, "-"), (17, 23, "*"), (3.5, 1.25, "/"),
                     (1234, 5678, "+"), (999, 999, "*"), (10 ** 6, 7, "//"), (48, 18, "%"), (2, 64, "**")]:
        expr = f"{a} {op} {b}"
        q = rng.choice(["Compute {e} exactly.", "What is {e}?", "Calculate {e} for me.", "Use exact arithmetic: {e}"])
        out.append(("calculator", q.format(e=expr), {"expression": expr}))
    for topic in ["latest news about the James Webb telescope", "reviews of the Framework laptop", "who won the 2026 Tour de France",
                  "opening hours of the Louvre", "recent papers on protein folding", "the population of Lagos in 2025",
                  "best hiking trails near Quito", "today's top football results", "release date of Python 3.14",
                  "current price of a Tesla Model 3"]:
        q = rng.choice(["Search the web for {t}.", "Look up {t} online.", "Find {t} on the internet."])
        out.append(("search_web", q.format(t=topic), {"query": topic}))
    people = [("ana@example.com", "Meeting moved", "The meeting moves to 3pm."), ("bob@example.org", "Invoice", "Please find the invoice attached."),
              ("chen@example.net", "Lunch", "Lunch on Friday?"), ("dee@example.com", "Report", "The report is ready."),
              ("eli@example.com", "Thanks", "Thank you for your help."), ("fay@example.org", "Holiday", "I am away next week."),
              ("gus@example.net", "Keys", "I left the keys at the desk."), ("hal@example.com", "Deadline", "The deadline is Monday."),
              ("ivy@example.org", "Party", "Party at 8pm Saturday."), ("jon@example.com", "Code review", "Please review my pull request.")]
    for to, subj, body in people:
        q = f'Send an email to {to} with the subject "{subj}" saying: {body}'
        out.append(("send_email", q, {"to": to, "subject": subj, "body": body}))
    for title, date, time in [("Dentist", "2026-03-14", "09:30"), ("Team sync", "2026-01-05", "10:00"), ("Mum's birthday", "2026-07-22", None),
                              ("Flight to Oslo", "2026-02-11", "06:45"), ("Yoga", "2026-04-01", "18:00"), ("Tax deadline", "2026-04-15", None),
                              ("Book club", "2026-05-09", "19:30"), ("Car service", "2026-06-02", "08:00"), ("Conference", "2026-09-17", None),
                              ("Piano lesson", "2026-10-03", "16:15")]:
        q = f'Put "{title}" in my calendar on {date}' + (f" at {time}." if time else ".")
        out.append(("create_event", q, {"title": title, "date": date, **({"time": time} if time else {})}))
    for amt, f, t in [(100, "USD", "EUR"), (2500, "JPY", "USD"), (75.5, "GBP", "CHF"), (1000, "EUR", "INR"), (42, "CAD", "AUD"),
                      (9.99, "USD", "MXN"), (300, "CNY", "KRW"), (18, "BRL", "USD"), (5000, "SEK", "NOK"), (60, "ZAR", "KES")]:
        q = rng.choice(["How much is {a} {f} in {t}?", "Convert {a} {f} to {t}.", "What are {a} {f} worth in {t}?"])
        out.append(("convert_currency", q.format(a=amt, f=f, t=t), {"amount": amt, "from_currency": f, "to_currency": t}))
    for text, lang in [("Good morning", "French"), ("Where is the station?", "German"), ("Thank you very much", "Japanese"),
                       ("I love this book", "Spanish"), ("The bill, please", "Italian"), ("See you tomorrow", "Portuguese"),
                       ("How much does it cost?", "Swahili"), ("Happy birthday", "Korean"), ("Turn left here", "Dutch"),
                       ("The water is cold", "Vietnamese")]:
        q = f'Translate "{text}" into {lang}.'
        out.append(("translate", q, {"text": text, "target_language": lang}))
    for sym, name in [("AAPL", "Apple"), ("MSFT", "Microsoft"), ("NVDA", "Nvidia"), ("TSLA", "Tesla"), ("AMZN", "Amazon"),
                      ("GOOGL", "Alphabet"), ("META", "Meta"), ("NFLX", "Netflix"), ("IBM", "IBM"), ("INTC", "Intel")]:
        q = rng.choice(["What's {n}'s stock price ({s})?", "Get the latest quote for {s}.", "How is {s} trading right now?"])
        out.append(("get_stock_price", q.format(n=name, s=sym), {"symbol": sym}))
    for mins, label in [(5, "tea"), (25, "focus"), (10, None), (3, "eggs"), (45, "laundry"), (15, None), (90, "bread"),
                        (1, None), (30, "parking"), (8, "pasta")]:
        q = f"Set a {mins}-minute timer" + (f" for the {label}." if label else ".")
        out.append(("set_timer", q, {"minutes": mins, **({"label": label} if label else {})}))
    for tz, place in [("Europe/Paris", "Paris"), ("Asia/Tokyo", "Tokyo"), ("America/New_York", "New York"), ("Africa/Nairobi", "Nairobi"),
                      ("Australia/Sydney", "Sydney"), ("America/Lima", "Lima"), ("Asia/Kolkata", "Mumbai"), ("Europe/Oslo", "Oslo"),
                      ("America/Toronto", "Toronto"), ("Asia/Ho_Chi_Minh", "Hanoi")]:
        q = f"What time is it now in {place}? (time zone {tz})"
        out.append(("get_time", q, {"timezone": tz}))
    for song, artist in [("Bohemian Rhapsody", "Queen"), (None, "Miles Davis"), ("Clair de Lune", None), ("Hey Jude", "The Beatles"),
                         (None, "Fela Kuti"), ("Halo", "Beyonce"), (None, "Nina Simone"), ("Take Five", "Dave Brubeck"),
                         ("Jolene", "Dolly Parton"), (None, "Daft Punk")]:
        if song and artist:
            q, args = f'Play "{song}" by {artist}.', {"song": song, "artist": artist}
        elif song:
            q, args = f'Play "{song}".', {"song": song}
        else:
            q, args = f"Play some {artist}.", {"artist": artist}
        out.append(("play_music", q, args))
    for v, f, t in [(10, "km", "mi"), (72, "F", "C"), (5, "kg", "lb"), (3, "ft", "m"), (250, "ml", "cup"), (1, "mi", "km"),
                    (100, "C", "F"), (2.5, "l", "gal"), (12, "in", "cm"), (60, "mph", "km/h")]:
        q = f"Convert {v} {f} to {t}."
        out.append(("convert_units", q, {"value": v, "from_unit": f, "to_unit": t}))
    for path in ["notes/todo.txt", "report.md", "recipes/pancakes.txt", "letters/2025-12-01.txt", "config.yaml",
                 "journal/monday.md", "shopping.txt", "ideas.txt", "drafts/essay.md", "README.md"]:
        q = rng.choice(["Read my file {p} and tell me what it says.", "Open {p} from my documents.", "Show me the contents of {p}."])
        out.append(("read_file", q.format(p=path), {"path": path}))
    return out


def parallels(rng):
    out = []
    pairs = [("Paris", "Tokyo"), ("Lima", "Oslo"), ("Cairo", "Berlin"), ("Sydney", "Toronto"), ("Hanoi", "Nairobi")]
    for a, b in pairs:
        out.append((f"What's the weather in {a} and in {b}?", [("get_weather", {"city": a}), ("get_weather", {"city": b})]))
    for s1, s2 in [("AAPL", "MSFT"), ("NVDA", "INTC"), ("TSLA", "AMZN"), ("META", "GOOGL"), ("IBM", "NFLX")]:
        out.append((f"Get the stock prices of {s1} and {s2}.", [("get_stock_price", {"symbol": s1}), ("get_stock_price", {"symbol": s2})]))
    for c, e in [("Oslo", "17 * 23"), ("Quito", "2 ** 20"), ("Mumbai", "365 * 24"), ("Berlin", "1000 // 7"), ("Tokyo", "81 % 7")]:
        out.append((f"Tell me the weather in {c}, and compute {e}.", [("get_weather", {"city": c}), ("calculator", {"expression": e})]))
    for amt, f, t, tz, place in [(50, "USD", "EUR", "Europe/Paris", "Paris"), (20, "GBP", "JPY", "Asia/Tokyo", "Tokyo"),
                                 (10, "EUR", "USD", "America/New_York", "New York"), (200, "INR", "USD", "Asia/Kolkata", "Mumbai"),
                                 (15, "AUD", "NZD", "Australia/Sydney", "Sydney")]:
        out.append((f"Convert {amt} {f} to {t}, and what time is it in {place} ({tz})?",
                    [("convert_currency", {"amount": amt, "from_currency": f, "to_currency": t}), ("get_time", {"timezone": tz})]))
    return out


NO_TOOL = [
    "Write a haiku about autumn leaves.", "Explain what a linked list is.", "Hello! How are you today?",
    "Give me three tips for better sleep.", "What is the difference between a list and a tuple in Python?",
    "Write a short poem about the sea.", "Summarise the plot of Romeo and Juliet in two sentences.",
    "What does 'ephemeral' mean?", "Tell me a joke about programmers.", "How do I reverse a string in Python?",
    "Explain recursion to a ten-year-old.", "What are the primary colours?", "Write a limerick about a cat.",
    "Why is the sky blue?", "Suggest a name for a bakery.", "What is photosynthesis?",
    "Give me a synonym for 'happy'.", "Explain the rules of tic-tac-toe.", "How many legs does a spider have?",
    "Write a thank-you note to a teacher.", "What is the capital of Italy?", "Describe a sunset in one sentence.",
    "What is a prime number?", "Thanks, that's all for now!", "Write a SQL query that selects all rows from a table named users.",
    "What's the plural of 'mouse'?", "Explain what an API is.", "Name three mammals that live in the ocean.",
    "What is the boiling point of water at sea level, in celsius?", "Write a function in JavaScript that adds two numbers.",
    "Tell me a fun fact about octopuses.", "What is the past tense of 'run'?", "Describe the water cycle briefly.",
    "What is 2 + 2?", "Give me a motivational quote.", "What does HTML stand for?",
    "How do you say 'hello' in Spanish?", "Explain what a black hole is in one paragraph.", "Write a two-line rhyme about coffee.",
    "What is the opposite of 'ancient'?", "Who wrote 'Pride and Prejudice'?", "Explain the difference between weather and climate.",
    "List the days of the week.", "What is a noun?", "Write a short bedtime story about a dragon.",
    "What is object-oriented programming?", "Good night!", "How many minutes are in an hour?",
    "Explain what Git is used for.", "Suggest a healthy breakfast.", "What is the chemical symbol for gold?",
    "Write a regular expression that matches an email address.", "What is the speed of light, roughly?",
    "Describe a cat to someone who has never seen one.", "What is the Pythagorean theorem?", "Give me an example of a metaphor.",
    "How do I make a cup of tea?", "Explain the word 'serendipity'.", "What is the largest planet in our solar system?",
    "Write a polite message declining an invitation.",
]


def main() -> None:
    rng = random.Random(14)
    names = list(TOOLS)
    cases = []

    def offer(gold_names):
        distract = rng.sample([n for n in names if n not in gold_names], 3)
        picked = list(dict.fromkeys([*gold_names, *distract]))
        rng.shuffle(picked)
        return [TOOLS[n] for n in picked]

    for i, (tool, q, args) in enumerate(singles(rng)):
        cases.append({"id": f"single-{i:03d}", "category": "single", "messages": [{"role": "user", "content": q}],
                      "tools": offer([tool]), "gold": [{"name": tool, "arguments": args}]})
    for i, (q, calls) in enumerate(parallels(rng)):
        cases.append({"id": f"parallel-{i:03d}", "category": "parallel", "messages": [{"role": "user", "content": q}],
                      "tools": offer([c[0] for c in calls]), "gold": [{"name": n, "arguments": a} for n, a in calls]})
    for i, q in enumerate(NO_TOOL):
        cases.append({"id": f"no-tool-{i:03d}", "category": "no_tool", "messages": [{"role": "user", "content": q}],
                      "tools": offer([]), "gold": []})
    out = Path(__file__).with_name("tool_bench.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
