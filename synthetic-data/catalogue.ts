/**
 * What the generated data set is made of: the four inspection classes, the products and defect
 * types, and the clients (the paper's three, the reference products for a starting model, the
 * external USB 3.0 product). synthetic-data/scenes.ts draws them; synthetic-data/generate.ts
 * writes the folders.
 */

export const INSPECTION_CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'] as const;
export type InspectionClass = (typeof INSPECTION_CLASSES)[number];

export type BodyShape = 'hexagon' | 'rectangle' | 'rounded' | 'wedge';
/**
 * The clients' defects (sticker, damaged, rust) and the reference set's own (crack, dirt,
 * no-tongue: a starting model learns port anomalies in general, never the clients' ones).
 */
export type DefectType = 'sticker' | 'damaged' | 'rust' | 'crack' | 'dirt' | 'no-tongue';

export interface ProductSpec {
  name: string;
  shape: BodyShape;
  /** Body colour, RGB 0..255. */
  color: readonly [number, number, number];
  /** Colour of the port's contact tongue: USB 2.0 sticks have a light one (the default), USB 3.0 a blue one. */
  tongue?: readonly [number, number, number];
  /**
   * Tongue colours to draw from, one per image with a visible port, at a random tone (x0.85-1.15);
   * instead of `tongue`. Only the varied reference set uses it (REFERENCE_TONGUES).
   */
  tongues?: readonly (readonly [number, number, number])[];
}

/**
 * EMPTY scenes. classic: a blank background or up to three wires and discs (the demo's, kept as
 * they were); workshop: a blank background a quarter of the time, else one to four objects of a
 * workbench: cables with a plug, screws, hex nuts, washers, bare circuit boards.
 */
export type ClutterStyle = 'classic' | 'workshop';

export interface ClientSpec {
  name: string;
  product: ProductSpec;
  defect: DefectType;
  /** Images per class, in INSPECTION_CLASSES order (unequal on purpose: non-IID). */
  counts: Record<InspectionClass, number>;
}

export const PAPER_CLIENTS: readonly ClientSpec[] = [
  {
    name: 'client1',
    product: { name: 'silver-hexagon', shape: 'hexagon', color: [178, 180, 186] },
    defect: 'sticker',
    counts: { OKAY: 110, NOT_OKAY: 60, HIDDEN: 40, EMPTY: 35 },
  },
  {
    name: 'client2',
    product: { name: 'blue-rectangle', shape: 'rectangle', color: [40, 86, 196] },
    defect: 'damaged',
    counts: { OKAY: 80, NOT_OKAY: 45, HIDDEN: 30, EMPTY: 30 },
  },
  {
    name: 'client3',
    product: { name: 'red-rounded', shape: 'rounded', color: [196, 44, 40] },
    defect: 'rust',
    counts: { OKAY: 140, NOT_OKAY: 55, HIDDEN: 45, EMPTY: 40 },
  },
];

/**
 * Reference images for a starting model: other products (shapes and colours the demo's clients do
 * not make) with every defect type, standing in for the broad data a vendor's pretrained model has
 * seen (the paper starts from ImageNet weights, which cannot be downloaded here).
 */
export const REFERENCE_CLIENTS: readonly ClientSpec[] = [
  {
    name: 'ref-green',
    product: { name: 'green-rectangle', shape: 'rectangle', color: [60, 150, 70] },
    defect: 'sticker',
    counts: { OKAY: 120, NOT_OKAY: 80, HIDDEN: 50, EMPTY: 50 },
  },
  {
    name: 'ref-black',
    product: { name: 'black-hexagon', shape: 'hexagon', color: [40, 40, 44] },
    defect: 'damaged',
    counts: { OKAY: 120, NOT_OKAY: 80, HIDDEN: 50, EMPTY: 50 },
  },
  {
    name: 'ref-white',
    product: { name: 'white-rounded', shape: 'rounded', color: [225, 225, 220] },
    defect: 'rust',
    counts: { OKAY: 120, NOT_OKAY: 80, HIDDEN: 50, EMPTY: 50 },
  },
];

/** The paper's USB 3.0 external set: a product none of the clients makes (shape, colour, blue tongue), OKAY and HIDDEN only. */
export const EXTERNAL_PRODUCT: ProductSpec = { name: 'purple-wedge-usb3', shape: 'wedge', color: [112, 62, 150], tongue: [40, 95, 210] };
export const EXTERNAL_COUNTS: Record<InspectionClass, number> = { OKAY: 60, NOT_OKAY: 0, HIDDEN: 40, EMPTY: 0 };
/** NOT_OKAY images per cross-client probe set (one set per client and foreign defect). */
export const PROBE_COUNT = 30;

/**
 * Reference images for a starting model (`fedline pretrain`, the experiment's pretrained base):
 * other products with other defect types (cracks, dirt, a missing contact tongue) and workshop
 * clutter, standing in for ImageNet weights. Neither the clients' products (their shape and colour
 * together), nor their defects, nor the external product appear: sixteen products, every body shape
 * in four colours none of them uses, each with every reference defect. Variety, not volume, is what
 * makes the base's features carry to new products: with the same recipe a base trained on these
 * sixteen products gave a head trained on its frozen features about 8 points more balanced
 * accuracy on the clients' images than one trained on three products (docs/experiment.md,
 * "Head-only").
 */
const REFERENCE_COLOURS = [
  ['green', [60, 150, 70]],
  ['black', [40, 40, 44]],
  ['white', [225, 225, 220]],
  ['yellow', [210, 180, 40]],
] as const;
const REFERENCE_SHAPES: readonly BodyShape[] = ['hexagon', 'rectangle', 'rounded', 'wedge'];

export const PRETRAIN_CLIENTS: readonly ClientSpec[] = REFERENCE_SHAPES.flatMap((shape) =>
  REFERENCE_COLOURS.flatMap(([colour, color]) =>
    (['crack', 'dirt', 'no-tongue'] as const).map((defect) => ({
      name: `ref-${colour}-${shape}-${defect}`,
      product: { name: `${colour}-${shape}`, shape, color },
      defect,
      counts: { OKAY: 11, NOT_OKAY: 10, HIDDEN: 6, EMPTY: 6 },
    })),
  ),
);

/**
 * Which reference images a base is pretrained on: `classic` (PRETRAIN_CLIENTS: every port with the
 * default light-brown tongue, as before) or `varied-tongues` (the same products, defects and
 * counts, each image's tongue drawn from REFERENCE_TONGUES). A base that has only seen one tongue
 * colour can learn "an intact port shows that colour" and call any other tongue a defect.
 */
export const REFERENCE_SETS = ['classic', 'varied-tongues'] as const;
export type ReferenceSet = (typeof REFERENCE_SETS)[number];

/**
 * Contact-tongue colours of real USB ports, as a vendor's images would show them: light brown
 * (the default of every generated product), white and grey (USB 2.0), blue (USB 3.0), teal
 * (USB 3.1), yellow and red (charging ports). Each is drawn at a random tone; none is the external
 * product's tongue (that one is a lighter blue, [40, 95, 210]). Not black: a black tongue in the
 * dark opening would look like the missing-tongue defect.
 */
export const REFERENCE_TONGUES: readonly (readonly [number, number, number])[] = [
  [150, 130, 70],
  [222, 222, 214],
  [105, 105, 110],
  [28, 58, 150],
  [25, 135, 135],
  [225, 185, 35],
  [185, 40, 35],
];

/** The reference products of a reference set (`pretrained.references`, `--references`). */
export function pretrainClients(set: ReferenceSet): readonly ClientSpec[] {
  if (set === 'classic') return PRETRAIN_CLIENTS;
  return PRETRAIN_CLIENTS.map((c) => ({ ...c, product: { ...c.product, tongues: REFERENCE_TONGUES } }));
}
