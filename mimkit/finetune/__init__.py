"""End-to-end fine-tuning of a pretrained encoder with a new classification head (``mimkit
finetune``), on MAE's recipe built from timm's parts: RandAugment, mixup / cutmix, label
smoothing, random erasing, AdamW with layer-wise lr decay, warm-up then cosine, drop path."""
