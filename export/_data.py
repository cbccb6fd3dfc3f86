"""Real inputs for the parity gate and for int8 calibration (two disjoint sets).

Sentences are everyday English written for this project and lines of public-domain texts
(Melville's *Moby-Dick*, Austen's *Pride and Prejudice*, the US Declaration of Independence),
of many lengths, one longer than any model's maximum so truncation is exercised too.
"""

from __future__ import annotations

from pathlib import Path

GATE_TEXTS: tuple[str, ...] = (
    "Call me Ishmael.",
    "Yes.",
    "A man is playing a guitar on the street.",
    "The stock market fell sharply after the announcement.",
    "Is that how it works?",
    "that is not an answer.",
    "Look forward to seeing it!",
    "Two dogs are running through a field of tall grass.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife.",
    "We hold these truths to be self-evident, that all men are created equal, that they are endowed by their "
    "Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.",
    "Please turn off the lights when you leave the room.",
    "The train to Boston was delayed by forty minutes because of snow on the tracks.",
    "She sold her old bicycle and bought a faster one.",
    "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul; "
    "whenever I find myself involuntarily pausing before coffin warehouses, and bringing up the rear of every "
    "funeral I meet; and especially whenever my hypos get such an upper hand of me, that it requires a strong "
    "moral principle to prevent me from deliberately stepping into the street, and methodically knocking "
    "people's hats off, then, I account it high time to get to sea as soon as I can. This is my substitute "
    "for pistol and ball. With a philosophical flourish Cato throws himself upon his sword; I quietly take to "
    "the ship. There is nothing surprising in this. If they but knew it, almost all men in their degree, some "
    "time or other, cherish very nearly the same feelings towards the ocean with me. There now is your "
    "insular city of the Manhattoes, belted round by wharves as Indian isles by coral reefs, commerce "
    "surrounds it with her surf.",
    "The committee will publish its report next week.",
    "A cat is sleeping on a sunny windowsill.",
    "How much does a ticket to the museum cost?",
    "The new bridge reduced travel time between the two towns by half.",
    "Nah, that's not how it works.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Researchers found that the drug lowered blood pressure in most patients.",
    "He forgot his umbrella again.",
    "A rocket lifts off from the launch pad at dawn.",
    "An astronaut floats inside the space station.",
)

CALIBRATION_TEXTS: tuple[str, ...] = (
    "The weather was cold and windy all weekend.",
    "Ok.",
    "My brother plays the piano every evening after dinner.",
    "Prices for fresh vegetables rose again this month.",
    "Where did you park the car?",
    "So answer the question.",
    "Anyway, welcome back.",
    "A woman is slicing tomatoes in a small kitchen.",
    "Mr. Bennet was so odd a mixture of quick parts, sarcastic humour, reserve, and caprice, that the "
    "experience of three-and-twenty years had been insufficient to make his wife understand his character.",
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, a decent respect to the opinions of mankind requires that they "
    "should declare the causes which impel them to the separation.",
    "The library closes at eight on weekdays.",
    "Children are building a sandcastle near the water.",
    "The company said profits would be lower than expected this year.",
    "I don't think that makes any sense at all.",
    "There is a coffee cup on the wooden table.",
    "The orchestra rehearsed the symphony for three hours.",
    "Could you send me the file before noon?",
    "The city council approved a new budget for public parks.",
    "A small boat drifts across the calm lake.",
    "Thanks, that helped a lot.",
    "The hospital opened a new wing for children last spring.",
    "Scientists measured the temperature of the ocean at several depths.",
    "Whoever comes first gets the best seat.",
    "It was the best of times and the worst of times for the small shop on the corner.",
    "The students handed in their essays late.",
    "A horse is grazing in a green meadow beside the barn.",
    "Quarterly revenue beat analysts' forecasts by a wide margin.",
    "Why would anyone do that?",
    "The meeting was moved to Thursday afternoon.",
    "Heavy rain flooded several roads in the north of the country.",
    "He reads the newspaper on the train every morning.",
    "The painting was sold at auction for a record price.",
)

IMAGE_DIR = Path(__file__).with_name("gate_images")


def gate_images() -> list:
    """The bundled photos, plus crops and a grayscale copy so several sizes and aspect ratios are seen."""
    from embedhub.modules import load_image

    photos = [load_image(p, i) for i, p in enumerate(sorted(IMAGE_DIR.glob("*.jpg")))]
    variants = list(photos)
    for img in photos:
        w, h = img.size
        variants.append(img.crop((0, 0, w // 2, h)))  # tall crop
        variants.append(img.resize((w * 2, h // 2)))  # wide, upscaled
    variants.append(photos[0].convert("L").convert("RGB"))
    return variants
