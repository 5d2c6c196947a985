"""Item categories: the product noun of an item's description (UCI Online Retail style, upper
case), e.g. WHITE HANGING HEART T-LIGHT HOLDER -> T-LIGHT HOLDER. `CATEGORY_RULES` is searched in
order and the first phrase found as whole words (a trailing plural S allowed) names the category,
so specific phrases ("HOT WATER BOTTLE") come before the generic ones ("BOTTLE"); no match gives
"GIFT".

Written (applied) by the launcher's demo catalogue builder (`launcher/build_demo_offers.py`),
which stores each offer's category; read by training (`vicino.models.features`), which derives
the category of items the catalogue does not categorise from their descriptions, so that both
agree on every item.
"""
from __future__ import annotations

import re

# (phrases, category): the first rule with a phrase in the description wins.
CATEGORY_RULES: list[tuple[tuple[str, ...], str]] = [
    (("T-LIGHT HOLDER", "T-LIGHT HLDR", "T-LIGHT", "TEA LIGHT", "CANDLEHOLDER", "CANDLE HOLDER"), "T-LIGHT HOLDER"),
    (("HOT WATER BOTTLE", "HOTTIE"), "HOT WATER BOTTLE"),
    (("CAKE CASES", "BAKING CASES", "MINI CASES"), "CAKE CASES"),
    (("CAKESTAND", "CAKE STAND"), "CAKE STAND"),
    (("LUNCH BOX", "SNACK BOXES"), "LUNCH BOX"),
    (("BAG", "SHOPPER"), "BAG"),
    (("HAND WARMER",), "HAND WARMER"),
    (("SIGN",), "SIGN"),
    (("DOORMAT",), "DOORMAT"),
    (("CLOCK",), "CLOCK"),
    (("NAPKINS", "TISSUES", "PAPER PLATES", "PAPER CUPS", "DOILIES"), "PARTYWARE"),
    (("CARD GAME", "SNAP CARDS", "DOMINOES", "SKITTLES", "SPINNING TOPS", "SKIPPING ROPE", "HARMONICA", "BINGO",
      "LADDERS", "CATCH CUP", "GAME"), "TOY"),
    (("KNEELING PAD", "GARDEN", "WATERING CAN"), "GARDEN"),
    (("WALLET", "PURSE", "UMBRELLA"), "ACCESSORY"),
    (("TEACUP", "CUP AND SAUCER", "CUP"), "CUP"),
    (("MUG",), "MUG"),
    (("CANDLE",), "CANDLE"),
    (("BUNTING",), "BUNTING"),
    (("CRACKERS",), "CRACKERS"),
    (("COOKIE CUTTER",), "COOKIE CUTTER"),
    (("PLASTERS",), "PLASTERS"),
    (("CHAIN KIT", "CRAFT", "FELTCRAFT", "SEWING KIT", "KNITTING", "COLOURING", "PAINT SET", "MODELLING",
      "CRAYONS"), "CRAFT KIT"),
    (("CARD", "GIFT TAGS"), "CARD"),
    (("FRAME", "PHOTO SHELF"), "FRAME"),
    (("CHALKBOARD", "BLACK BOARD", "MEMO BOARD", "SHOPPING LIST"), "BOARD"),
    (("DRAWER KNOB",), "DRAWER KNOB"),
    (("CABINET", "CHEST", "STORAGE", "BREAD BIN", "CONTAINER", "TIDY", "CRATE"), "STORAGE"),
    (("TIN", "TINS", "JELLY MOULDS", "BAKING SET", "JAM MAKING", "SPOONS", "SCALES", "OVEN GLOVE", "APRON",
      "CUTLERY", "TEA TOWELS", "BRUSH", "RECIPE BOX", "TEA SET", "TEAPOT", "EGG CUP", "JUG", "POPCORN", "COFFEE"),
     "KITCHEN"),
    (("BOWL", "PLATE"), "TABLEWARE"),
    (("LIGHT", "LIGHTS", "LANTERN"), "LIGHTING"),
    (("RIBBON", "RIBBON REEL"), "RIBBON"),
    (("HEART OF WICKER", "WICKER", "DECORATION", "ORNAMENT", "HANGING", "TRELLIS", "BELLS", "PARASOL", "FAN",
      "GARLAND", "WREATH", "WOODEN HEART", "WOODEN STAR"), "DECORATION"),
    (("CUSHION",), "CUSHION"),
    (("DOLL", "PLAYHOUSE", "NESTING BOXES", "BUILDING BLOCK", "GLIDERS", "TOY"), "TOY"),
    (("BOX", "TRINKET", "POT", "JAR", "MONEY BANK"), "BOX"),
    (("HOOK", "HANGER", "COAT RACK", "PEGS", "PEG", "LADDER"), "HOME"),
    (("NOTEBOOKS", "STATIONERY", "PENCILS", "PEN"), "STATIONERY"),
]
_COMPILED = [(re.compile(r"\b(?:" + "|".join(re.escape(p) + "S?" for p in phrases) + r")\b"), category)
             for phrases, category in CATEGORY_RULES]


def category_of(description: str) -> str:
    text = " ".join(description.upper().split())
    for pattern, category in _COMPILED:
        if pattern.search(text):
            return category
    return "GIFT"
