"""Objects365 v2 (365 classes, boxes only) registered as ``objects365_train`` / ``objects365_val``.

Same names, files and metadata as the official EVA-02 detectron2 fork, so its O365 recipes
(``projects/ViTDet/configs/eva2_o365/``) run unchanged. Layout under ``$DETECTRON2_DATASETS``
(default ``datasets``)::

    Objects365/annotations/zhiyuan_objv2_train.json   COCO-format boxes, category ids 1..365
    Objects365/annotations/zhiyuan_objv2_val.json
    Objects365/<file_name of each image entry>        e.g. images/v1/patch0/objects365_v1_*.jpg

Image paths are the json's ``file_name`` joined to ``Objects365/``. See ``datasets/README.md``.

Registration does no I/O; the json is read when the dataset is first requested.
"""

import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = [
    "OBJECTS365_CATEGORIES",
    "OBJECTS365_SPLITS",
    "objects365_metadata",
    "register_objects365",
]

logger = logging.getLogger(__name__)

# Category names in id order (id = index + 1), spelled exactly as in zhiyuan_objv2_*.json:
# detectron2's load_coco_json refuses a json whose names differ from the registered ones, so
# the dataset's typos ("Moniter/TV", "Bakset") and trailing spaces ("Cigar/Cigarette ",
# "Formula 1 ", "Table Tennis ") are kept.
OBJECTS365_CATEGORIES: Tuple[str, ...] = (
    "Person", "Sneakers", "Chair", "Other Shoes", "Hat", "Car", "Lamp", "Glasses", "Bottle",
    "Desk", "Cup", "Street Lights", "Cabinet/shelf", "Handbag/Satchel", "Bracelet", "Plate",
    "Picture/Frame", "Helmet", "Book", "Gloves", "Storage box", "Boat", "Leather Shoes",
    "Flower", "Bench", "Potted Plant", "Bowl/Basin", "Flag", "Pillow", "Boots", "Vase",
    "Microphone", "Necklace", "Ring", "SUV", "Wine Glass", "Belt", "Moniter/TV", "Backpack",
    "Umbrella", "Traffic Light", "Speaker", "Watch", "Tie", "Trash bin Can", "Slippers",
    "Bicycle", "Stool", "Barrel/bucket", "Van", "Couch", "Sandals", "Bakset", "Drum",
    "Pen/Pencil", "Bus", "Wild Bird", "High Heels", "Motorcycle", "Guitar", "Carpet",
    "Cell Phone", "Bread", "Camera", "Canned", "Truck", "Traffic cone", "Cymbal", "Lifesaver",
    "Towel", "Stuffed Toy", "Candle", "Sailboat", "Laptop", "Awning", "Bed", "Faucet", "Tent",
    "Horse", "Mirror", "Power outlet", "Sink", "Apple", "Air Conditioner", "Knife",
    "Hockey Stick", "Paddle", "Pickup Truck", "Fork", "Traffic Sign", "Ballon", "Tripod", "Dog",
    "Spoon", "Clock", "Pot", "Cow", "Cake", "Dinning Table", "Sheep", "Hanger",
    "Blackboard/Whiteboard", "Napkin", "Other Fish", "Orange/Tangerine", "Toiletry", "Keyboard",
    "Tomato", "Lantern", "Machinery Vehicle", "Fan", "Green Vegetables", "Banana",
    "Baseball Glove", "Airplane", "Mouse", "Train", "Pumpkin", "Soccer", "Skiboard", "Luggage",
    "Nightstand", "Tea pot", "Telephone", "Trolley", "Head Phone", "Sports Car", "Stop Sign",
    "Dessert", "Scooter", "Stroller", "Crane", "Remote", "Refrigerator", "Oven", "Lemon", "Duck",
    "Baseball Bat", "Surveillance Camera", "Cat", "Jug", "Broccoli", "Piano", "Pizza",
    "Elephant", "Skateboard", "Surfboard", "Gun", "Skating and Skiing shoes", "Gas stove",
    "Donut", "Bow Tie", "Carrot", "Toilet", "Kite", "Strawberry", "Other Balls", "Shovel",
    "Pepper", "Computer Box", "Toilet Paper", "Cleaning Products", "Chopsticks", "Microwave",
    "Pigeon", "Baseball", "Cutting/chopping Board", "Coffee Table", "Side Table", "Scissors",
    "Marker", "Pie", "Ladder", "Snowboard", "Cookies", "Radiator", "Fire Hydrant", "Basketball",
    "Zebra", "Grape", "Giraffe", "Potato", "Sausage", "Tricycle", "Violin", "Egg",
    "Fire Extinguisher", "Candy", "Fire Truck", "Billards", "Converter", "Bathtub",
    "Wheelchair", "Golf Club", "Briefcase", "Cucumber", "Cigar/Cigarette ", "Paint Brush",
    "Pear", "Heavy Truck", "Hamburger", "Extractor", "Extention Cord", "Tong", "Tennis Racket",
    "Folder", "American Football", "earphone", "Mask", "Kettle", "Tennis", "Ship", "Swing",
    "Coffee Machine", "Slide", "Carriage", "Onion", "Green beans", "Projector", "Frisbee",
    "Washing Machine/Drying Machine", "Chicken", "Printer", "Watermelon", "Saxophone", "Tissue",
    "Toothbrush", "Ice cream", "Hotair ballon", "Cello", "French Fries", "Scale", "Trophy",
    "Cabbage", "Hot dog", "Blender", "Peach", "Rice", "Wallet/Purse", "Volleyball", "Deer",
    "Goose", "Tape", "Tablet", "Cosmetics", "Trumpet", "Pineapple", "Golf Ball", "Ambulance",
    "Parking meter", "Mango", "Key", "Hurdle", "Fishing Rod", "Medal", "Flute", "Brush",
    "Penguin", "Megaphone", "Corn", "Lettuce", "Garlic", "Swan", "Helicopter", "Green Onion",
    "Sandwich", "Nuts", "Speed Limit Sign", "Induction Cooker", "Broom", "Trombone", "Plum",
    "Rickshaw", "Goldfish", "Kiwi fruit", "Router/modem", "Poker Card", "Toaster", "Shrimp",
    "Sushi", "Cheese", "Notepaper", "Cherry", "Pliers", "CD", "Pasta", "Hammer", "Cue",
    "Avocado", "Hamimelon", "Flask", "Mushroon", "Screwdriver", "Soap", "Recorder", "Bear",
    "Eggplant", "Board Eraser", "Coconut", "Tape Measur/ Ruler", "Pig", "Showerhead", "Globe",
    "Chips", "Steak", "Crosswalk Sign", "Stapler", "Campel", "Formula 1 ", "Pomegranate",
    "Dishwasher", "Crab", "Hoverboard", "Meat ball", "Rice Cooker", "Tuba", "Calculator",
    "Papaya", "Antelope", "Parrot", "Seal", "Buttefly", "Dumbbell", "Donkey", "Lion", "Urinal",
    "Dolphin", "Electric Drill", "Hair Dryer", "Egg tart", "Jellyfish", "Treadmill", "Lighter",
    "Grapefruit", "Game board", "Mop", "Radish", "Baozi", "Target", "French", "Spring Rolls",
    "Monkey", "Rabbit", "Pencil Case", "Yak", "Red Cabbage", "Binoculars", "Asparagus",
    "Barbell", "Scallop", "Noddles", "Comb", "Dumpling", "Oyster", "Table Teniis paddle",
    "Cosmetics Brush/Eyeliner Pencil", "Chainsaw", "Eraser", "Lobster", "Durian", "Okra",
    "Lipstick", "Cosmetics Mirror", "Curling", "Table Tennis ",
)  # fmt: skip

# dataset name -> (image root, json file), relative to $DETECTRON2_DATASETS
OBJECTS365_SPLITS: Dict[str, Tuple[str, str]] = {
    "objects365_train": ("Objects365/", "Objects365/annotations/zhiyuan_objv2_train.json"),
    "objects365_val": ("Objects365/", "Objects365/annotations/zhiyuan_objv2_val.json"),
}


def objects365_metadata() -> Dict[str, object]:
    """``thing_classes`` and the category-id map (json id ``i + 1`` -> contiguous ``i``)."""
    return {
        "thing_classes": list(OBJECTS365_CATEGORIES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(OBJECTS365_CATEGORIES))},
    }


def register_objects365(root: Optional[str] = None) -> List[str]:
    """Register ``objects365_train`` and ``objects365_val`` (COCO format) without reading files.

    Args:
        root (str or None): the datasets folder holding ``Objects365/``; None means
            ``$DETECTRON2_DATASETS`` (default "datasets"), as detectron2's builtin datasets.

    Returns:
        list[str]: the names newly registered; names already in the DatasetCatalog are skipped.
    """
    if root is None:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    registered = []
    for name, (image_root, json_file) in OBJECTS365_SPLITS.items():
        if name in DatasetCatalog.list():
            logger.debug("Dataset '%s' is already registered; skipping it.", name)
            continue
        register_coco_instances(
            name,
            objects365_metadata(),
            os.path.join(root, json_file),
            os.path.join(root, image_root),
        )
        registered.append(name)
    return registered
